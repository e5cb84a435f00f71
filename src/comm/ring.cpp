#include "ring.h"

#include <ATen/ATen.h>

#include "ds/common/error.h"

namespace ds::comm {

void reduce_into(at::Tensor& acc, const at::Tensor& incoming, ReduceOp op) {
  switch (op) {
    case ReduceOp::Sum:
    case ReduceOp::Avg: acc.add_(incoming); break;
    case ReduceOp::Max: at::maximum_out(acc, acc, incoming); break;
    case ReduceOp::Min: at::minimum_out(acc, acc, incoming); break;
  }
}

std::vector<int64_t> split_offsets(const std::vector<int64_t>& splits) {
  std::vector<int64_t> offsets(splits.size() + 1, 0);
  for (size_t i = 0; i < splits.size(); ++i) offsets[i + 1] = offsets[i] + splits[i];
  return offsets;
}

namespace {

int mod(int a, int n) { return ((a % n) + n) % n; }

at::Tensor bytes_of(const at::Tensor& t) { return t.view(-1).view(at::kByte); }

// Segments of a chunk: [begin, end) element ranges of about segment_bytes each.
std::vector<std::pair<int64_t, int64_t>> segments(int64_t length, int64_t element_size, int64_t segment_bytes) {
  int64_t per = std::max<int64_t>(1, segment_bytes / element_size);
  std::vector<std::pair<int64_t, int64_t>> out;
  for (int64_t b = 0; b < length; b += per) out.emplace_back(b, std::min(length, b + per));
  return out;
}

// One ring step: send `out` to the next rank while receiving `in` from the previous one,
// calling on_segment(begin, end) as each received segment lands. Returns bytes sent.
template <typename OnSegment>
int64_t ring_step(Transport& t, const at::Tensor& out, const at::Tensor& in, uint32_t tag, const RingOptions& o,
                  OnSegment on_segment) {
  int next = mod(t.rank() + 1, t.size()), prev = mod(t.rank() - 1, t.size());
  auto send_segs = segments(out.numel(), out.element_size(), o.segment_bytes);
  auto recv_segs = segments(in.numel(), in.element_size(), o.segment_bytes);
  std::vector<std::unique_ptr<PendingOp>> sends, recvs;
  for (size_t k = 0; k < recv_segs.size(); ++k) {
    auto [b, e] = recv_segs[k];
    recvs.push_back(t.irecv(bytes_of(in.slice(0, b, e)), prev, tag + static_cast<uint32_t>(k)));
  }
  int64_t sent = 0;
  for (size_t k = 0; k < send_segs.size(); ++k) {
    auto [b, e] = send_segs[k];
    sends.push_back(t.isend(bytes_of(out.slice(0, b, e)), next, tag + static_cast<uint32_t>(k)));
    sent += (e - b) * out.element_size();
  }
  for (size_t k = 0; k < recvs.size(); ++k) {
    recvs[k]->wait(o.timeout);
    on_segment(recv_segs[k].first, recv_segs[k].second);
  }
  for (auto& s : sends) s->wait(o.timeout);
  return sent;
}

// Tags: every step of a collective gets its own block of segment tags.
uint32_t step_tag(const RingOptions& o, int step) { return o.tag_base + static_cast<uint32_t>(step) * 4096u; }

at::Tensor chunk_view(const at::Tensor& flat, int64_t n, int world, int index) {
  Chunk c = chunk_of(n, world, index);
  return flat.slice(0, c.offset, c.offset + c.length);
}

}  // namespace

int64_t ring_reduce_scatter(Transport& t, at::Tensor& output, const at::Tensor& input, ReduceOp op,
                            const RingOptions& o) {
  const int n = t.size(), r = t.rank();
  at::Tensor in = input.view(-1), out = output.view(-1);
  const int64_t numel = in.numel();
  if (n == 1) {
    out.copy_(in);
    return 0;
  }
  // acc holds the running sum of the chunk being passed on; the last step lands in `out`.
  at::Tensor acc = at::empty({chunk_of(numel, n, 0).length}, in.options());
  at::Tensor next_acc = at::empty_like(acc);
  at::Tensor sending = chunk_view(in, numel, n, mod(r - 1, n));
  int64_t sent = 0;
  for (int s = 0; s < n - 1; ++s) {
    int recv_index = mod(r - s - 2, n);
    at::Tensor local = chunk_view(in, numel, n, recv_index);
    at::Tensor target = (s == n - 2) ? out : next_acc.slice(0, 0, local.numel());
    sent += ring_step(t, sending, target, step_tag(o, s), o, [&](int64_t b, int64_t e) {
      at::Tensor seg = target.slice(0, b, e);
      reduce_into(seg, local.slice(0, b, e), op);
    });
    std::swap(acc, next_acc);
    sending = acc.slice(0, 0, local.numel());
  }
  if (op == ReduceOp::Avg) out.div_(n);
  return sent;
}

int64_t ring_all_gather(Transport& t, at::Tensor& output, const at::Tensor& input, const RingOptions& o) {
  const int n = t.size(), r = t.rank();
  at::Tensor out = output.view(-1);
  const int64_t numel = out.numel();
  chunk_view(out, numel, n, r).copy_(input.view(-1));
  int64_t sent = 0;
  for (int s = 0; s < n - 1; ++s) {
    at::Tensor sending = chunk_view(out, numel, n, mod(r - s, n));
    at::Tensor receiving = chunk_view(out, numel, n, mod(r - s - 1, n));
    sent += ring_step(t, sending, receiving, step_tag(o, s), o, [](int64_t, int64_t) {});
  }
  return sent;
}

int64_t ring_all_reduce(Transport& t, at::Tensor& buffer, ReduceOp op, const RingOptions& o) {
  const int n = t.size();
  if (n == 1) return 0;
  at::Tensor flat = buffer.view(-1);
  at::Tensor mine = at::empty({chunk_of(flat.numel(), n, t.rank()).length}, flat.options());
  int64_t sent = ring_reduce_scatter(t, mine, flat, op, o);
  RingOptions gather = o;
  gather.tag_base = step_tag(o, n);
  return sent + ring_all_gather(t, flat, mine, gather);
}

int64_t tree_broadcast(Transport& t, at::Tensor& buffer, int root, const RingOptions& o) {
  const int n = t.size();
  const int vr = mod(t.rank() - root, n);  // rank relative to the root
  at::Tensor bytes = bytes_of(buffer);
  int64_t sent = 0;
  // Receive from the parent (the rank that differs in vr's highest set bit), then send on.
  int mask = 1;
  while (mask < n) {
    if (vr & mask) {
      t.irecv(bytes, mod(vr - mask + root, n), o.tag_base)->wait(o.timeout);
      break;
    }
    mask <<= 1;
  }
  mask >>= 1;
  std::vector<std::unique_ptr<PendingOp>> sends;
  for (; mask > 0; mask >>= 1) {
    if (vr + mask < n) {
      sends.push_back(t.isend(bytes, mod(vr + mask + root, n), o.tag_base));
      sent += bytes.numel();
    }
  }
  for (auto& s : sends) s->wait(o.timeout);
  return sent;
}

int64_t pairwise_all_to_all(Transport& t, at::Tensor& output, const at::Tensor& input,
                            const std::vector<int64_t>& output_splits, const std::vector<int64_t>& input_splits,
                            const RingOptions& o) {
  const int n = t.size(), r = t.rank();
  at::Tensor in = input.view(-1), out = output.view(-1);
  auto in_off = split_offsets(input_splits), out_off = split_offsets(output_splits);
  out.slice(0, out_off[r], out_off[r + 1]).copy_(in.slice(0, in_off[r], in_off[r + 1]));
  int64_t sent = 0;
  for (int s = 1; s < n; ++s) {
    int to = mod(r + s, n), from = mod(r - s, n);
    at::Tensor send_part = in.slice(0, in_off[to], in_off[to + 1]);
    at::Tensor recv_part = out.slice(0, out_off[from], out_off[from + 1]);
    auto recv = t.irecv(bytes_of(recv_part), from, o.tag_base + s);
    auto send = t.isend(bytes_of(send_part), to, o.tag_base + s);
    recv->wait(o.timeout);
    send->wait(o.timeout);
    sent += send_part.numel() * send_part.element_size();
  }
  return sent;
}

}  // namespace ds::comm
