#include "ds/compress/quantize.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#include "ds/common/error.h"

namespace ds::compress {

namespace {

void check_float(const at::Tensor& t, const char* what) {
  DS_CHECK(t.defined() && t.is_contiguous() && t.dim() == 1, what, " must be a contiguous 1-D tensor");
  const auto dt = t.scalar_type();
  DS_CHECK(dt == at::kFloat || dt == at::kBFloat16 || dt == at::kHalf, what, " must be fp32, bf16 or fp16, not ", dt);
}

void check_packed(const at::Tensor& packed, const Int8Blocks& b) {
  DS_CHECK(packed.defined() && packed.is_contiguous() && packed.scalar_type() == at::kByte,
           "packed int8 blocks must be a contiguous uint8 tensor");
  DS_CHECK(packed.numel() == b.bytes(), "packed int8 blocks of ", b.numel, " values in groups of ", b.group, " take ",
           b.bytes(), " bytes, not ", packed.numel());
}

// One group of floats: the codes and the scale. The largest |x| is found on the bits (the sign
// cleared, floats order as integers, and anything from 0x7f800000 up is an infinity or a NaN),
// an integer max the compiler vectorizes where a float max with NaN semantics stays scalar.
float quantize_group(const float* x, int64_t n, int8_t* codes) {
  uint32_t top = 0;
  for (int64_t i = 0; i < n; ++i) {
    uint32_t bits;
    std::memcpy(&bits, x + i, 4);  // (no aliasing through a cast; compiles to the load)
    top = std::max(top, bits & 0x7fffffffu);
  }
  if (top >= 0x7f800000u) {  // not finite
    std::memset(codes, 0, size_t(n));
    return std::nanf("");
  }
  float amax;
  std::memcpy(&amax, &top, 4);
  if (amax == 0.0f) {
    std::memset(codes, 0, size_t(n));
    return 0.0f;
  }
  const float scale = amax / 127.0f;
  for (int64_t i = 0; i < n; ++i) {
    const float q = x[i] / scale;  // within [-127, 127] up to rounding; x / scale, as the format says
    const float r = q + (q >= 0.0f ? 0.5f : -0.5f);
    codes[i] = int8_t(std::max(-127.0f, std::min(127.0f, r)));  // truncation of r: halves away from zero
  }
  return scale;
}

template <typename T>
void quantize_typed(const T* x, const Int8Blocks& b, uint8_t* out) {
  auto* codes = reinterpret_cast<int8_t*>(out);
  auto* scales = reinterpret_cast<float*>(out + b.scales_offset());
  std::memset(out + b.numel, 0, size_t(b.scales_offset() - b.numel));
  std::vector<float> widened(std::is_same_v<T, float> ? 0 : size_t(std::min(b.group, b.numel)));
  for (int64_t g = 0; g < b.groups(); ++g) {
    const int64_t begin = g * b.group, n = std::min(b.group, b.numel - begin);
    const float* values;
    if constexpr (std::is_same_v<T, float>) {
      values = x + begin;
    } else {  // bf16 / fp16: widened a group at a time
      for (int64_t i = 0; i < n; ++i) widened[size_t(i)] = float(x[begin + i]);
      values = widened.data();
    }
    scales[g] = quantize_group(values, n, codes + begin);
  }
}

template <typename T>
void dequantize_typed(const uint8_t* in, const Int8Blocks& b, T* out, bool accumulate, float alpha) {
  const auto* codes = reinterpret_cast<const int8_t*>(in);
  float scales_storage;
  for (int64_t g = 0; g < b.groups(); ++g) {
    std::memcpy(&scales_storage, in + b.scales_offset() + 4 * g, 4);  // the wire's bytes may be unaligned
    const float scale = scales_storage * (accumulate ? alpha : 1.0f);
    const int64_t begin = g * b.group, n = std::min(b.group, b.numel - begin);
    const int8_t* c = codes + begin;
    T* o = out + begin;
    if (accumulate) {
      for (int64_t i = 0; i < n; ++i) o[i] = T(float(o[i]) + float(c[i]) * scale);
    } else {
      for (int64_t i = 0; i < n; ++i) o[i] = T(float(c[i]) * scale);
    }
  }
}

}  // namespace

void quantize_int8(const at::Tensor& x, int64_t group, at::Tensor packed) {
  DS_CHECK(group > 0, "the quantization group must hold at least one value");
  check_float(x, "the tensor to quantize");
  const Int8Blocks b{x.numel(), group};
  check_packed(packed, b);
  auto* out = packed.data_ptr<uint8_t>();
  switch (x.scalar_type()) {
    case at::kFloat: return quantize_typed(x.data_ptr<float>(), b, out);
    case at::kBFloat16: return quantize_typed(x.data_ptr<at::BFloat16>(), b, out);
    default: return quantize_typed(x.data_ptr<at::Half>(), b, out);
  }
}

void dequantize_int8(const at::Tensor& packed, int64_t group, at::Tensor out, bool accumulate, float alpha) {
  DS_CHECK(group > 0, "the quantization group must hold at least one value");
  check_float(out, "the dequantized tensor");
  DS_CHECK(!accumulate || out.scalar_type() == at::kFloat, "dequantize_int8 accumulates into fp32 only");
  const Int8Blocks b{out.numel(), group};
  check_packed(packed, b);
  const auto* in = packed.data_ptr<uint8_t>();
  switch (out.scalar_type()) {
    case at::kFloat: return dequantize_typed(in, b, out.data_ptr<float>(), accumulate, alpha);
    case at::kBFloat16: return dequantize_typed(in, b, out.data_ptr<at::BFloat16>(), false, 1.0f);
    default: return dequantize_typed(in, b, out.data_ptr<at::Half>(), false, 1.0f);
  }
}

comm::Work quantized_all_gather(comm::Communicator& comm, const at::Tensor& shard, int64_t group, at::Tensor& wire) {
  const Int8Blocks b{shard.numel(), group};
  at::Tensor mine = at::empty({b.bytes()}, at::TensorOptions().dtype(at::kByte));
  quantize_int8(shard, group, mine);
  wire = at::empty({b.bytes() * comm.size()}, mine.options());
  if (comm.size() == 1) {
    wire.copy_(mine);
    return comm::Work();
  }
  return comm.all_gather(wire, mine);
}

void dequantize_gathered(const at::Tensor& wire, int ranks, int64_t group, at::Tensor out) {
  DS_CHECK(ranks > 0 && out.numel() % ranks == 0, "a gathered buffer of ", out.numel(), " values over ", ranks,
           " ranks has shards of unequal length");
  const int64_t n = out.numel() / ranks, bytes = Int8Blocks{n, group}.bytes();
  DS_CHECK(wire.numel() == bytes * ranks, "the gathered int8 blocks take ", wire.numel(), " bytes, not ", bytes * ranks);
  for (int r = 0; r < ranks; ++r)
    dequantize_int8(wire.slice(0, r * bytes, (r + 1) * bytes), group, out.slice(0, r * n, (r + 1) * n));
}

QuantizedReduceScatter::QuantizedReduceScatter(comm::Communicator& comm, const at::Tensor& input, int64_t group)
    : group_(group), ranks_(comm.size()) {
  check_float(input, "the tensor to reduce-scatter");
  std::vector<int64_t> in_splits, out_splits;
  for (int r = 0; r < ranks_; ++r) in_splits.push_back(Int8Blocks{comm::chunk_of(input.numel(), ranks_, r).length, group}.bytes());
  chunk_ = comm::chunk_of(input.numel(), ranks_, comm.rank()).length;
  const int64_t mine = Int8Blocks{chunk_, group}.bytes();
  out_splits.assign(size_t(ranks_), mine);
  int64_t total = 0;
  for (int64_t s : in_splits) total += s;
  sent_ = at::empty({total}, at::TensorOptions().dtype(at::kByte));
  int64_t at_byte = 0;
  for (int r = 0; r < ranks_; ++r) {
    const comm::Chunk c = comm::chunk_of(input.numel(), ranks_, r);
    quantize_int8(input.slice(0, c.offset, c.offset + c.length), group, sent_.slice(0, at_byte, at_byte + in_splits[size_t(r)]));
    at_byte += in_splits[size_t(r)];
  }
  received_ = at::empty({mine * ranks_}, sent_.options());
  if (ranks_ == 1) received_.copy_(sent_);
  else work_ = comm.all_to_all(received_, sent_, out_splits, in_splits);
}

void QuantizedReduceScatter::finish(at::Tensor& out, float alpha) {
  DS_CHECK(active(), "QuantizedReduceScatter::finish without an exchange");
  DS_CHECK(out.numel() == chunk_ && out.scalar_type() == at::kFloat, "the reduce-scatter's output is this rank's fp32 chunk of ",
           chunk_, " values");
  work_.wait();
  const int64_t bytes = Int8Blocks{chunk_, group_}.bytes();
  for (int r = 0; r < ranks_; ++r)
    dequantize_int8(received_.slice(0, r * bytes, (r + 1) * bytes), group_, out, /*accumulate=*/true, alpha);
  sent_ = received_ = at::Tensor();
  ranks_ = 0;
}

}  // namespace ds::compress
