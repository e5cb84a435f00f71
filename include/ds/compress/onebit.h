// 1-bit compressed all-reduce with error feedback: the communication of DeepSpeed's 1-bit Adam
// (Tang et al., 2021), on the communicator's all-to-all and all-gather.
//
//   ds::compress::OneBitAllReduce ar(n, comm);   // keeps the two error-feedback buffers
//   ar.all_reduce(momentum);                      // in place: ~ the mean over the ranks
//
// One call, for a tensor of n fp32 elements on W ranks (n padded to N, a multiple of 8 W; rank
// c is the "server" of chunk c, elements [c N/W, (c+1) N/W)):
//   1. worker: v = x + e_w; s_w = ||v|| / sqrt(n); e_w = v - s_w sign(v)   (sign(0) = +1)
//   2. all-to-all of sign(v) packed 8 per byte, all-gather of the scales s_w
//   3. server of chunk c: m = mean over ranks r of s_w[r] sign_r + e_s;
//      s_s = ||m|| / sqrt(k) over the chunk's k real elements; e_s = m - s_s sign(m)
//   4. all-gather of the servers' packed signs and scales; x = s_s[c] sign(m_c) chunk by chunk
// So each rank sends about n/8 + n/8 bytes (and 2 W scales) instead of an fp32 all-reduce's
// ~8 n: 1/32 of the bytes. The errors carry what compression dropped into the next call. The
// padding's bits are 0; its values never reach a result, a scale or an error.
#pragma once

#include <ATen/core/Tensor.h>

#include <memory>

#include "ds/comm/communicator.h"

namespace ds::compress {

// Bit i of byte i / 8 (least significant first) is 1 where x[i] >= 0; the last byte's unused
// bits are 0. The packing the all-reduce sends. x: any float tensor, read flat.
at::Tensor pack_signs(const at::Tensor& x);
// +1 / -1 (float) for the first n bits of `packed` (uint8).
at::Tensor unpack_signs(const at::Tensor& packed, int64_t n);

class OneBitAllReduce {
 public:
  OneBitAllReduce(int64_t numel, std::shared_ptr<comm::Communicator> comm);

  // buffer: 1-D contiguous fp32 of numel elements; replaced by the decompressed average.
  void all_reduce(at::Tensor& buffer);

  // The chunk each rank serves for `numel` elements over `ranks` ranks (the length padded to a
  // multiple of 8 x ranks, divided by ranks): the server error's length.
  static int64_t chunk_of(int64_t numel, int ranks);
  int64_t numel() const { return n_; }
  int64_t padded_numel() const { return padded_; }
  // This rank's chunk as server: [chunk_begin, chunk_begin + chunk_size) of the padded buffer.
  int64_t chunk_begin() const { return chunk_ * comm_->rank(); }
  int64_t chunk_size() const { return chunk_; }
  // The error feedback (checkpointed with the optimizer): the worker's over the whole tensor,
  // the server's over this rank's chunk. Zero at the start.
  at::Tensor& worker_error() { return worker_error_; }
  at::Tensor& server_error() { return server_error_; }

 private:
  int64_t n_, padded_, chunk_;
  std::shared_ptr<comm::Communicator> comm_;
  at::Tensor worker_error_, server_error_;
};

}  // namespace ds::compress
