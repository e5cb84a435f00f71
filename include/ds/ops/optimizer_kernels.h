// Raw-pointer CPU optimizer kernels: Adam, AdamW, Adagrad and Lion over flat fp32 buffers.
// No LibTorch here (as DeepSpeed's aio core has none): ds/ops/cpu_optimizer.h puts tensors on top.
//
// One pass over memory per step: read param, grad and state, write param and state and, if asked,
// a bf16/fp16 working copy of the updated parameters. SIMD code is written once with Google
// Highway and compiled for every x86-64 instruction set Highway knows (AVX3 = AVX-512, AVX2,
// SSE4, SSSE3, scalar); the best one the CPU supports is picked at run time. Any length works:
// full vectors first, then the last n % lanes elements go through the same vector code via a
// padded scratch copy, so there is no alignment or padding requirement on the caller.
//
//   ds::ops::OptimizerHyper h;            // kind, lr, betas, eps, weight decay, step, ...
//   h.kind = ds::ops::OptimizerKind::AdamW;
//   h.step = 1;
//   ds::ops::FlatBuffers b;
//   b.n = n; b.param = p; b.grad = g; b.state0 = exp_avg; b.state1 = exp_avg_sq;
//   ds::ops::ThreadPool pool(2);
//   ds::ops::optimizer_step(h, b, &pool);
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "ds/ops/thread_pool.h"

namespace ds::ops {

enum class OptimizerKind { Adam, AdamW, Adagrad, Lion };
// Element type of a gradient or of the working copy (the master params and state are fp32).
enum class ElemType : uint8_t { F32, BF16, F16 };

const char* to_string(OptimizerKind kind);
const char* to_string(ElemType type);
// Number of fp32 state buffers per parameter: Adam/AdamW 2 (exp_avg, exp_avg_sq),
// Adagrad 1 (sum), Lion 1 (exp_avg).
int state_count(OptimizerKind kind);

// The hyper-parameters of one step, in double precision as PyTorch keeps them.
struct OptimizerHyper {
  OptimizerKind kind = OptimizerKind::Adam;
  double lr = 1e-3;
  double beta1 = 0.9;    // Lion: interpolation for the update sign
  double beta2 = 0.999;  // Lion: momentum decay
  double eps = 1e-8;
  double weight_decay = 0;      // Adam: L2 added to the gradient; AdamW, Lion: decoupled
  bool bias_correction = true;  // Adam/AdamW only
  double lr_decay = 0;          // Adagrad only
  int64_t step = 1;             // 1-based; bias correction (Adam) and lr decay (Adagrad) use it
};

// Flat buffers of n elements each. Only `grad` and `half_copy` have a choice of type; all
// pointers may be unaligned; they must not overlap (checked).
struct FlatBuffers {
  int64_t n = 0;
  float* param = nullptr;
  const void* grad = nullptr;
  ElemType grad_type = ElemType::F32;
  float* state0 = nullptr;              // exp_avg (Adam, AdamW, Lion) or sum (Adagrad)
  float* state1 = nullptr;              // exp_avg_sq (Adam, AdamW); null otherwise
  void* half_copy = nullptr;            // optional: receives the updated params as half_type
  ElemType half_type = ElemType::BF16;  // BF16 or F16 when half_copy is set
  bool half_as_f32 = false;             // half_copy is fp32 holding the half_type-rounded values
};

// An instruction set the kernels were compiled for, as Highway names it (bit = HWY_AVX2, ...).
struct SimdTarget {
  int64_t bit = 0;
  std::string name;
};
// Compiled targets this CPU supports, best first. Never empty (scalar always works).
std::vector<SimdTarget> available_simd_targets();
// What optimizer_step uses with target 0: Highway's run-time choice (the best supported).
SimdTarget best_simd_target();
// The target of that name ("AVX3", "AVX2", "SSE4", "SSSE3", "SCALAR"; case-insensitive), or
// ds::Error listing the available ones when it is unknown or unsupported here.
SimdTarget simd_target_by_name(const std::string& name);

// Elements per tile: the unit of work handed to a thread (64 KiB of each fp32 stream, so a
// tile's working set stays in L2). A multiple of every SIMD width, so only the last tile of a
// buffer can have a partial vector.
constexpr int64_t kTileElements = 16384;

// One optimizer step over all n elements, in place. Checks every argument (ds::Error naming
// the value). pool == nullptr runs on the calling thread only. simd_target == 0: the best
// target (run-time dispatch); otherwise a bit from available_simd_targets().
void optimizer_step(const OptimizerHyper& hyper, const FlatBuffers& buffers, ThreadPool* pool,
                    int64_t simd_target = 0);

// The same checks optimizer_step makes, without running it.
void check_optimizer_args(const OptimizerHyper& hyper, const FlatBuffers& buffers);

namespace detail {

// fp32 coefficients of one step, computed in double from OptimizerHyper exactly as PyTorch's
// optimizers compute them and rounded once. The kernels see only these.
struct StepCoefficients {
  float beta1 = 0, one_minus_beta1 = 0, beta2 = 0, one_minus_beta2 = 0;
  float eps = 0;
  float neg_step_size = 0;  // Adam: -lr / (1 - beta1^t); Adagrad: -lr / (1 + (t-1) lr_decay); Lion: -lr
  float inv_sqrt_bias_correction2 = 1;  // Adam: 1 / sqrt(1 - beta2^t)
  float l2_decay = 0;                   // Adam, Adagrad: grad += l2_decay * param
  float param_scale = 1;                // AdamW, Lion: param *= 1 - lr * weight_decay
};
StepCoefficients make_coefficients(const OptimizerHyper& hyper);

// Updates elements [begin, end) on one target (begin a multiple of kTileElements). Defined in
// the Highway translation unit.
void run_kernel(int64_t target_bit, OptimizerKind kind, const StepCoefficients& c, const FlatBuffers& b,
                int64_t begin, int64_t end);
// Compiled targets as Highway bits (all of them, supported here or not), best first.
std::vector<int64_t> compiled_simd_targets();
int64_t dispatched_simd_target();  // HWY_DYNAMIC_DISPATCH's choice

}  // namespace detail
}  // namespace ds::ops
