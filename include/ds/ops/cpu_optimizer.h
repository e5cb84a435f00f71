// CPU optimizers for ZeRO-Offload: Adam, AdamW, Adagrad and Lion on flat fp32 master tensors,
// with SIMD kernels chosen at run time and a thread pool (see ds/ops/optimizer_kernels.h for
// the raw-pointer layer underneath and docs/OFFLOAD.md for the numbers).
//
// One CpuOptimizer per parameter group; the state lives in tensors the caller owns (so that
// ZeRO can shard, checkpoint or swap them). Tensors must be contiguous CPU tensors: nothing is
// copied behind your back, and anything else is a ds::Error naming the offending tensor.
//
//   ds::ops::CpuOptimizerOptions o;
//   o.kind = ds::ops::OptimizerKind::AdamW;
//   o.weight_decay = 0.01;
//   ds::ops::CpuOptimizer opt(o);
//   auto state = opt.make_state(master.numel());       // exp_avg, exp_avg_sq
//   for (int64_t t = 1; t <= steps; ++t)
//     opt.step(master, grad_bf16, state, t, scheduler_lr(t), &working_copy_bf16);
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "ds/ops/optimizer_kernels.h"

namespace ds::ops {

struct CpuOptimizerOptions {
  OptimizerKind kind = OptimizerKind::Adam;
  double lr = 1e-3;
  double beta1 = 0.9, beta2 = 0.999;     // Lion: DeepSpeed/paper defaults are 0.9, 0.99
  double eps = 1e-8;                     // Adagrad in PyTorch defaults to 1e-10: set it
  double weight_decay = 0;               // Adam, Adagrad: L2 on the gradient; AdamW, Lion: decoupled
  bool bias_correction = true;           // Adam/AdamW (as DeepSpeed's CPU Adam)
  double lr_decay = 0;                   // Adagrad
  double initial_accumulator_value = 0;  // Adagrad: make_state fills `sum` with it
  int threads = 0;          // 0 = at::get_num_threads() at construction; 1 = the calling thread only
  std::string simd_target;  // "" = the best this CPU supports; else e.g. "AVX2" (tests, benchmarks)
};

class CpuOptimizer {
 public:
  explicit CpuOptimizer(CpuOptimizerOptions o);
  ~CpuOptimizer();
  CpuOptimizer(CpuOptimizer&&) noexcept;
  CpuOptimizer& operator=(CpuOptimizer&&) noexcept;

  const CpuOptimizerOptions& options() const { return options_; }
  // Schedulers that cycle momentum (DeepSpeed's OneCycle) change beta1 between steps.
  void set_beta1(double beta1);
  int threads() const;
  const SimdTarget& simd_target() const { return target_; }

  // The state tensors for a parameter of n elements, fp32 and contiguous:
  // Adam/AdamW {exp_avg, exp_avg_sq}, Adagrad {sum}, Lion {exp_avg}.
  std::vector<at::Tensor> make_state(int64_t n) const;

  // One step on a flat fp32 master tensor, in place. `grad` is fp32, bf16 or fp16; `step` is
  // 1-based; `lr` overrides options().lr (schedulers). If half_copy is given (bf16 or fp16), it
  // receives the updated parameters in the same pass (round to nearest even); an fp32
  // half_copy receives them rounded to `copy_precision` (bf16 or fp16) and widened back.
  void step(at::Tensor& param, const at::Tensor& grad, std::vector<at::Tensor>& state, int64_t step,
            double lr, at::Tensor* half_copy = nullptr, at::ScalarType copy_precision = at::kFloat);
  // The same with options().lr.
  void step(at::Tensor& param, const at::Tensor& grad, std::vector<at::Tensor>& state, int64_t step);

 private:
  CpuOptimizerOptions options_;
  SimdTarget target_;
  std::unique_ptr<ThreadPool> pool_;
};

}  // namespace ds::ops
