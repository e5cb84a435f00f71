#include "ds/compress/onebit.h"

#include <ATen/ATen.h>

#include <cmath>

#include "ds/common/error.h"
#include "ds/common/strings.h"
#include "ds/comm/logger.h"

namespace ds::compress {

namespace {

// 1, 2, 4, ... 128 as uint8: bit i of a byte.
const at::Tensor& bit_weights() {
  static const at::Tensor w = at::tensor({1, 2, 4, 8, 16, 32, 64, 128}, at::kByte);
  return w;
}

// ||x|| / sqrt(count), 0 for an empty range.
double scale_of(const at::Tensor& x) {
  return x.numel() == 0 ? 0.0 : x.norm().item<double>() / std::sqrt(double(x.numel()));
}

// +1 where x >= 0, -1 elsewhere.
at::Tensor signs(const at::Tensor& x) { return at::where(x >= 0, 1.0f, -1.0f); }

}  // namespace

at::Tensor pack_signs(const at::Tensor& x) {
  const int64_t n = x.numel(), bytes = (n + 7) / 8;
  at::Tensor bits = at::zeros({bytes * 8}, at::kByte);
  bits.narrow(0, 0, n).copy_(x.reshape({-1}) >= 0);
  return (bits.view({bytes, 8}) * bit_weights()).sum(1, /*keepdim=*/false, at::kByte);
}

at::Tensor unpack_signs(const at::Tensor& packed, int64_t n) {
  if (packed.scalar_type() != at::kByte || packed.numel() * 8 < n)
    throw Error(ds::str("unpack_signs: ", packed.numel(), " bytes of type ", packed.scalar_type(), " hold no ", n, " signs"));
  at::Tensor bits = packed.reshape({-1, 1}).bitwise_and(bit_weights()).ne(0).reshape({-1}).narrow(0, 0, n);
  return at::where(bits, 1.0f, -1.0f);
}

OneBitAllReduce::OneBitAllReduce(int64_t numel, std::shared_ptr<comm::Communicator> comm)
    : n_(numel), comm_(std::move(comm)) {
  if (n_ < 1) throw Error(ds::str("a compressed all-reduce needs at least one element, got ", n_));
  const int64_t unit = 8 * comm_->size();  // every chunk a whole number of bytes
  padded_ = (n_ + unit - 1) / unit * unit;
  chunk_ = padded_ / comm_->size();
  worker_error_ = at::zeros({n_}, at::kFloat);
  server_error_ = at::zeros({chunk_}, at::kFloat);
}

void OneBitAllReduce::all_reduce(at::Tensor& buffer) {
  if (buffer.scalar_type() != at::kFloat || buffer.dim() != 1 || buffer.numel() != n_ || !buffer.is_contiguous())
    throw Error(ds::str("compressed all-reduce: expected a contiguous 1-D fp32 tensor of ", n_, " elements, got ",
                        buffer.scalar_type(), " ", buffer.sizes()));
  const int64_t W = comm_->size(), rank = comm_->rank();
  comm::LogLabel label("compressed");  // the comms logger shows these ops apart
  // 1. The worker compresses what it has plus what it dropped last time.
  at::Tensor v = buffer + worker_error_;
  const double worker_scale = scale_of(v);
  at::Tensor padded = at::zeros({padded_}, at::kFloat);
  padded.narrow(0, 0, n_).copy_(v);
  at::Tensor sign_v = signs(padded);
  worker_error_.copy_(v - sign_v.narrow(0, 0, n_) * float(worker_scale));
  // 2. Chunk c of every rank's signs goes to rank c; every rank's scale to everyone.
  at::Tensor sent = pack_signs(sign_v);  // W chunks of chunk_/8 bytes, in chunk order
  at::Tensor received = at::empty_like(sent);
  comm_->all_to_all(received, sent).wait();
  at::Tensor scales = at::empty({W}, at::kFloat);
  at::Tensor mine = at::full({1}, float(worker_scale), at::kFloat);
  comm_->all_gather(scales, mine).wait();
  // 3. As the server of chunk `rank`: the mean of the decompressed chunks, compressed again.
  const int64_t bytes = chunk_ / 8;
  at::Tensor m = at::zeros({chunk_}, at::kFloat);
  for (int64_t r = 0; r < W; ++r) m.add_(unpack_signs(received.narrow(0, r * bytes, bytes), chunk_), scales[r].item<float>());
  m.div_(double(W)).add_(server_error_);
  const int64_t real = std::clamp<int64_t>(n_ - rank * chunk_, 0, chunk_);  // the chunk's elements before the padding
  const double server_scale = scale_of(m.narrow(0, 0, real));
  at::Tensor sign_m = signs(m);
  server_error_.zero_();
  server_error_.narrow(0, 0, real).copy_(m.narrow(0, 0, real) - sign_m.narrow(0, 0, real) * float(server_scale));
  // 4. Every server's signs and scale to everyone; decompress.
  at::Tensor all_signs = at::empty({padded_ / 8}, at::kByte);
  at::Tensor my_signs = pack_signs(sign_m);
  comm_->all_gather(all_signs, my_signs).wait();
  at::Tensor server_scales = at::empty({W}, at::kFloat);
  at::Tensor my_scale = at::full({1}, float(server_scale), at::kFloat);
  comm_->all_gather(server_scales, my_scale).wait();
  at::Tensor result = unpack_signs(all_signs, padded_).view({W, chunk_}) * server_scales.unsqueeze(1);
  buffer.copy_(result.reshape({-1}).narrow(0, 0, n_));
}

}  // namespace ds::compress
