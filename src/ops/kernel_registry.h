// Private to src/ops: the table each compiled instruction set registers, so that a caller (a
// test, the benchmark) can run the kernels on a target of its choice rather than the best one.
#pragma once

#include <cstdint>

#include "ds/ops/optimizer_kernels.h"

namespace ds::ops::detail {

// Updates elements [begin, end) of b.
using RangeKernel = void (*)(const StepCoefficients& c, const FlatBuffers& b, int64_t begin, int64_t end);

// What the working copy is written as (None: no copy): bf16/fp16, or fp32 holding the
// bf16/fp16-rounded value (working weights that compute in fp32 with half-precision values).
enum class HalfOut : int { None = 0, BF16 = 1, F16 = 2, BF16AsF32 = 3, F16AsF32 = 4 };

constexpr int kNumKinds = 4;
constexpr int kNumGradTypes = 3;
constexpr int kNumHalfOuts = 5;
constexpr int kTableSize = kNumKinds * kNumGradTypes * kNumHalfOuts;
constexpr int table_index(OptimizerKind k, ElemType g, HalfOut h) {
  return (static_cast<int>(k) * kNumGradTypes + static_cast<int>(g)) * kNumHalfOuts + static_cast<int>(h);
}

// Called once per compiled target during static initialization of the kernel translation unit.
bool register_kernels(int64_t target_bit, const RangeKernel* table);

}  // namespace ds::ops::detail
