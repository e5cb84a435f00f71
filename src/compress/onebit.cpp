#include "ds/compress/onebit.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "ds/common/error.h"
#include "ds/common/strings.h"
#include "ds/comm/logger.h"

namespace ds::compress {

namespace {

// Bits of v >= 0 for v[0, n), 8 per byte least significant first, over `bytes` bytes (bits
// past n are 0). With Drop, also v[i] -= scale * sign(v[i]): what compression drops, in the
// same pass.
template <bool Drop, typename Float>
void pack(Float* v, int64_t n, int64_t bytes, float scale, uint8_t* out) {
  for (int64_t j = 0; j < bytes; ++j) {
    uint8_t byte = 0;
    for (int k = 0; k < 8; ++k) {
      const int64_t i = j * 8 + k;
      if (i >= n) break;
      const bool positive = v[i] >= 0;
      if constexpr (Drop) v[i] -= positive ? scale : -scale;
      byte |= uint8_t(positive) << k;
    }
    out[j] = byte;
  }
}

// m[i] += +-scale by bit i of `bits`, for i in [0, n), n a multiple of 8.
void add_signs(const uint8_t* bits, int64_t n, float scale, float* m) {
  for (int64_t j = 0; j < n / 8; ++j)
    for (int k = 0; k < 8; ++k) m[j * 8 + k] += (bits[j] >> k) & 1 ? scale : -scale;
}

// out[i] = +-scale by bit i of `bits`, for i in [0, n).
void write_signs(const uint8_t* bits, int64_t n, float scale, float* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = (bits[i / 8] >> (i % 8)) & 1 ? scale : -scale;
}

}  // namespace

at::Tensor pack_signs(const at::Tensor& x) {
  const at::Tensor v = x.reshape({-1}).to(at::kFloat).contiguous();
  const int64_t n = v.numel();
  at::Tensor out = at::empty({(n + 7) / 8}, at::kByte);
  pack<false>(v.data_ptr<float>(), n, out.numel(), 0.0f, out.data_ptr<uint8_t>());
  return out;
}

at::Tensor unpack_signs(const at::Tensor& packed, int64_t n) {
  if (packed.scalar_type() != at::kByte || packed.numel() * 8 < n)
    throw Error(ds::str("unpack_signs: ", packed.numel(), " bytes of type ", packed.scalar_type(), " hold no ", n, " signs"));
  const at::Tensor bits = packed.reshape({-1}).contiguous();
  at::Tensor out = at::empty({n}, at::kFloat);
  write_signs(bits.data_ptr<uint8_t>(), n, 1.0f, out.data_ptr<float>());
  return out;
}

int64_t OneBitAllReduce::chunk_of(int64_t numel, int ranks) {
  const int64_t unit = 8 * int64_t(ranks);  // every chunk a whole number of bytes
  return (numel + unit - 1) / unit * unit / ranks;
}

OneBitAllReduce::OneBitAllReduce(int64_t numel, std::shared_ptr<comm::Communicator> comm)
    : n_(numel), comm_(std::move(comm)) {
  if (n_ < 1) throw Error(ds::str("a compressed all-reduce needs at least one element, got ", n_));
  chunk_ = chunk_of(n_, comm_->size());
  padded_ = chunk_ * comm_->size();
  worker_error_ = at::zeros({n_}, at::kFloat);
  server_error_ = at::zeros({chunk_}, at::kFloat);
}

void OneBitAllReduce::all_reduce(at::Tensor& buffer) {
  if (buffer.scalar_type() != at::kFloat || buffer.dim() != 1 || buffer.numel() != n_ || !buffer.is_contiguous())
    throw Error(ds::str("compressed all-reduce: expected a contiguous 1-D fp32 tensor of ", n_, " elements, got ",
                        buffer.scalar_type(), " ", buffer.sizes()));
  const int64_t W = comm_->size(), rank = comm_->rank(), bytes = chunk_ / 8;
  comm::LogLabel label("compressed");  // the comms logger shows these ops apart
  float* x = buffer.data_ptr<float>();
  // 1. The worker compresses what it has plus what it dropped last time (v, kept in e_w).
  float* ew = worker_error_.data_ptr<float>();
  double sq = 0;
  for (int64_t i = 0; i < n_; ++i) {
    const float v = x[i] + ew[i];
    ew[i] = v;
    sq += double(v) * v;
  }
  const float worker_scale = float(std::sqrt(sq / double(n_)));
  at::Tensor sent = at::empty({padded_ / 8}, at::kByte);  // W chunks of chunk_/8 bytes, in chunk order
  pack<true>(ew, n_, padded_ / 8, worker_scale, sent.data_ptr<uint8_t>());
  // 2. Chunk c of every rank's signs goes to rank c; every rank's scale to everyone.
  at::Tensor received = at::empty_like(sent);
  comm_->all_to_all(received, sent).wait();
  at::Tensor scales = at::empty({W}, at::kFloat);
  comm_->all_gather(scales, at::full({1}, worker_scale, at::kFloat)).wait();
  // 3. As the server of chunk `rank`: the mean of the decompressed chunks, compressed again.
  at::Tensor m = at::zeros({chunk_}, at::kFloat);
  float* mp = m.data_ptr<float>();
  const uint8_t* in = received.data_ptr<uint8_t>();
  const float* sc = scales.data_ptr<float>();
  for (int64_t r = 0; r < W; ++r) add_signs(in + r * bytes, chunk_, sc[r], mp);
  const float* es = server_error_.data_ptr<float>();
  const int64_t real = std::clamp<int64_t>(n_ - rank * chunk_, 0, chunk_);  // the chunk's elements before the padding
  double msq = 0;
  for (int64_t i = 0; i < chunk_; ++i) {
    mp[i] = mp[i] / float(W) + es[i];
    if (i < real) msq += double(mp[i]) * mp[i];
  }
  const float server_scale = real == 0 ? 0.0f : float(std::sqrt(msq / double(real)));
  at::Tensor my_signs = at::empty({bytes}, at::kByte);
  pack<true>(mp, real, bytes, server_scale, my_signs.data_ptr<uint8_t>());
  server_error_.zero_();
  std::memcpy(server_error_.data_ptr<float>(), mp, size_t(real) * sizeof(float));  // what compression dropped
  // 4. Every server's signs and scale to everyone; decompress.
  at::Tensor all_signs = at::empty({padded_ / 8}, at::kByte);
  comm_->all_gather(all_signs, my_signs).wait();
  at::Tensor server_scales = at::empty({W}, at::kFloat);
  comm_->all_gather(server_scales, at::full({1}, server_scale, at::kFloat)).wait();
  const uint8_t* all = all_signs.data_ptr<uint8_t>();
  const float* ss = server_scales.data_ptr<float>();
  for (int64_t c = 0; c < W; ++c) {
    const int64_t begin = c * chunk_, count = std::clamp<int64_t>(n_ - begin, 0, chunk_);
    if (count > 0) write_signs(all + c * bytes, count, ss[c], x + begin);
  }
}

}  // namespace ds::compress
