#include "ds/pipe/link.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cstring>

#include "ds/comm/agreement.h"
#include "ds/common/error.h"

namespace ds::pipe {

namespace {

constexpr int64_t kHeaderLength = 2 + StageLink::kMaxDims;  // dtype, rank, sizes
constexpr int kMaxTag = 1 << 23;  // two tags each, under the communicator's 2^24

// Header and data of one message: two tags per user tag, so a header can never be taken for
// data of another message.
int header_tag(int tag) { return 2 * tag; }
int data_tag(int tag) { return 2 * tag + 1; }

void check_tag(int tag) {
  if (tag < 0 || tag >= kMaxTag) throw Error(ds::str("pipeline link: tag ", tag, " is outside 0..", kMaxTag - 1));
}

// A hash of the first MiB of a contiguous tensor's bytes, its dtype and sizes (64-bit words,
// multiply-xor): equal tensors hash alike, a tensor that differs between ranks almost surely not.
uint64_t content_hash(const at::Tensor& t) {
  uint64_t h = 0x9E3779B97F4A7C15ull ^ uint64_t(t.scalar_type());
  auto mix = [&h](uint64_t word) { h = (h ^ word) * 0x100000001B3ull, h ^= h >> 29; };
  for (int64_t d = 0; d < t.dim(); ++d) mix(uint64_t(t.size(d)));
  const auto* bytes = static_cast<const unsigned char*>(t.data_ptr());
  const size_t n = std::min<size_t>(t.nbytes(), size_t(1) << 20);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t word;
    std::memcpy(&word, bytes + i, 8);
    mix(word);
  }
  for (; i < n; ++i) mix(bytes[i]);
  return h;
}

}  // namespace

StageLink::StageLink(std::shared_ptr<comm::Communicator> pipe, std::shared_ptr<comm::Communicator> split_over)
    : pipe_(std::move(pipe)), split_over_(std::move(split_over)) {}

void StageLink::check_same_over_group(const at::Tensor& t, int dst, int tag, const char* key) {
  if (std::find(checked_keys_.begin(), checked_keys_.end(), key) != checked_keys_.end()) return;
  checked_keys_.emplace_back(key);
  if (!comm::same_on_every_rank(*split_over_, content_hash(t)))
    throw Error(ds::str(key, ": stage ", pipe_->rank(), " sends stage ", dst, " (tag ", tag,
                        ") a tensor that differs between its tensor-parallel ranks, so it cannot travel split over "
                        "them (a stage whose last layer leaves its output split?); set ", key, " to false"));
}

StageLink::~StageLink() {
  // A link dropped with sends in flight (an error unwound the batch) still must not free
  // their buffers under the communicator; their errors no longer matter.
  for (Pending& p : pending_) {
    try {
      p.header_work.wait();
      p.data_work.wait();
    } catch (...) {
    }
  }
}

void StageLink::send(const at::Tensor& t, int dst, int tag, const char* split_key) {
  check_tag(tag);
  if (t.dim() > kMaxDims)
    throw Error(ds::str("pipeline link: a tensor of ", t.dim(), " dimensions; at most ", kMaxDims, " are sent"));
  if (dst == pipe_->rank()) {  // a stage's chunk to its own next chunk (interleaved on one stage)
    local_[tag].push_back(t.detach());
    return;
  }
  Pending p;
  p.header = at::zeros({kHeaderLength}, at::kLong);
  auto* h = p.header.data_ptr<int64_t>();
  h[0] = int64_t(t.scalar_type());
  h[1] = t.dim();
  for (int64_t d = 0; d < t.dim(); ++d) h[2 + d] = t.size(d);
  p.data = t.detach().contiguous();
  if (split_key && splits()) {  // this rank's chunk only; the header keeps the whole shape
    check_same_over_group(p.data, dst, tag, split_key);
    const comm::Chunk c = comm::chunk_of(p.data.numel(), split_over_->size(), split_over_->rank());
    p.data = p.data.reshape({-1}).narrow(0, c.offset, c.length);
  }
  p.header_work = pipe_->send(p.header, dst, header_tag(tag));
  if (p.data.numel() > 0) p.data_work = pipe_->send(p.data, dst, data_tag(tag));
  pending_.push_back(std::move(p));
  // Keep the list short: what has left can go.
  pending_.erase(std::remove_if(pending_.begin(), pending_.end() - 1,
                                [](const Pending& q) { return q.header_work.is_completed() && q.data_work.is_completed() &&
                                                              !q.header_work.exception() && !q.data_work.exception(); }),
                 pending_.end() - 1);
}

at::Tensor StageLink::recv(int src, int tag, bool split) {
  check_tag(tag);
  if (src == pipe_->rank()) {
    auto& queue = local_[tag];
    if (queue.empty())
      throw Error(ds::str("pipeline link: stage ", src, " waits for a message from itself (tag ", tag,
                          ") that it has not sent: the schedule is broken"));
    at::Tensor t = queue.front();
    queue.pop_front();
    return t;
  }
  at::Tensor header = at::empty({kHeaderLength}, at::kLong);
  pipe_->recv(header, src, header_tag(tag)).wait();
  const auto* h = header.data_ptr<int64_t>();
  if (h[1] < 0 || h[1] > kMaxDims || h[0] < 0 || h[0] >= int64_t(c10::ScalarType::NumOptions))
    throw Error(ds::str("pipeline link: a malformed message header from stage ", src, " (tag ", tag,
                        "): do both stages run the same deepspeed.cpp build?"));
  std::vector<int64_t> sizes(h + 2, h + 2 + h[1]);
  at::Tensor data = at::empty(sizes, at::TensorOptions().dtype(c10::ScalarType(h[0])));
  if (!split || !splits()) {
    if (data.numel() > 0) pipe_->recv(data, src, data_tag(tag)).wait();
    return data;
  }
  // This rank's chunk from its peer, then the whole from the group's chunks.
  const comm::Chunk c = comm::chunk_of(data.numel(), split_over_->size(), split_over_->rank());
  at::Tensor chunk = at::empty({c.length}, data.options());
  if (c.length > 0) pipe_->recv(chunk, src, data_tag(tag)).wait();
  at::Tensor flat = data.view({-1});
  split_over_->all_gather(flat, chunk).wait();
  return data;
}

void StageLink::wait_sends() {
  for (Pending& p : pending_) {  // on an error the rest stay pending (the destructor waits)
    p.header_work.wait();
    p.data_work.wait();
  }
  pending_.clear();
}

}  // namespace ds::pipe
