// Symmetric int8 blocks and the quantized collectives of ZeRO++ (Wang et al., 2023): qwZ's
// all-gather of weight shards and qgZ's reduce-scatter of gradients, each sending about a
// quarter of fp32's bytes (half of bf16's).
//
//   ds::compress::Int8Blocks b{n, 2048};       // n values in groups of 2048: b.bytes() on the wire
//   quantize_int8(x, 2048, packed);              // packed: uint8 [b.bytes()]
//   dequantize_int8(packed, 2048, out);          // out: n values again, each within scale / 2
//
// A packed block is the n int8 codes, padding to a multiple of 4 bytes, then one fp32 scale per
// group (its largest |x| / 127). A code is round(x / scale) (halves away from zero), so the
// largest value of a group comes back exactly and every value within scale / 2. A group that
// holds a NaN or an infinity gets a NaN scale and codes 0: it decodes to NaN, so an overflow
// is still seen after the collective (fp16's loss scaler skips the step) instead of turning into
// garbage codes. A group of zeros has scale 0 and decodes to zeros.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

#include "ds/comm/communicator.h"

namespace ds::compress {

// The values per scale ZeRO++'s quantized gathers and reductions use here (DeepSpeed's
// quantizer aims at groups of a few thousand values; the scales cost 4 / 2048 of the codes).
inline constexpr int64_t kZeroPlusPlusGroup = 2048;

struct Int8Blocks {
  int64_t numel = 0;
  int64_t group = kZeroPlusPlusGroup;
  int64_t groups() const { return (numel + group - 1) / group; }
  int64_t scales_offset() const { return (numel + 3) / 4 * 4; }
  int64_t bytes() const { return scales_offset() + 4 * groups(); }
};

// x: 1-D contiguous fp32, bf16 or fp16; packed: contiguous uint8 of Int8Blocks{x.numel(), group}.bytes().
void quantize_int8(const at::Tensor& x, int64_t group, at::Tensor packed);
// The values of `packed` (n = out.numel()) into out (fp32, bf16 or fp16, contiguous):
// out = values, or with accumulate (fp32 out only) out += alpha * values.
void dequantize_int8(const at::Tensor& packed, int64_t group, at::Tensor out, bool accumulate = false,
                     float alpha = 1.0f);

// qwZ: every rank's `shard` (the same length on every rank) quantized and all-gathered into
// `wire` (uint8, size() packed blocks, allocated here). After the Work, dequantize_gathered
// writes the whole buffer, rank by rank, into `out` (size() * shard length values).
comm::Work quantized_all_gather(comm::Communicator& comm, const at::Tensor& shard, int64_t group, at::Tensor& wire);
void dequantize_gathered(const at::Tensor& wire, int ranks, int64_t group, at::Tensor out);

// qgZ: a reduce-scatter whose contributions travel quantized. Each rank quantizes the chunk
// of `input` every other rank owns (comm::chunk_of) and sends it by one all-to-all; finish()
// sums the ranks' dequantized contributions in fp32, so each is quantized once (a ring would
// quantize the partial sums at every hop).
class QuantizedReduceScatter {
 public:
  QuantizedReduceScatter() = default;
  // Starts the exchange (the quantization runs here, on the caller's thread).
  QuantizedReduceScatter(comm::Communicator& comm, const at::Tensor& input, int64_t group);
  bool active() const { return ranks_ > 0; }
  // Waits, then out (fp32, this rank's chunk) += alpha * the sum of the contributions.
  void finish(at::Tensor& out, float alpha);
  // Waits for the exchange only (teardown); finish() is not called after it.
  void wait() { work_.wait(); }

 private:
  comm::Work work_;
  at::Tensor sent_, received_;
  int64_t group_ = 0, chunk_ = 0;
  int ranks_ = 0;
};

}  // namespace ds::compress
