// PrecisionPolicy: which dtype each of the engine's buffers has (in the spirit of FSDP's
// MixedPrecision), chosen once from the config and handed to the flat units, the stage-3
// coordinator, the gradient reducer and the optimizer.
//
//   master   the optimizer's weights and states (fp32)
//   working  the units' parameter buffers: what the model computes with
//   param    the precision the weights' values have: the working weights are the masters
//            rounded to it, and it is what weights travel in (the stage 1-2 all-gather after
//            a step, stage 3's shards)
//   reduce   what gradients travel in (communication_data_type)
//
//   grad     the dtype of the gradient shards (stages 1-3) between micro-batches
//
//   fp32          master fp32, working fp32, param fp32, reduce fp32, grad fp32
//   bf16 storage  master fp32, working fp32, param bf16, reduce bf16, grad fp32   (bf16 values, fp32 GEMMs)
//   bf16 compute  master fp32, working bf16, param bf16, reduce bf16, grad bf16   (bf16 GEMMs)
//   fp16          as bf16 storage with fp16, plus dynamic loss scaling
//
// Whether bf16 is computed in or only stored is the compute path's choice, not the config's
// (choose_compute): bf16 where the CPU has native bf16 dot products (AVX512_BF16, AMX-BF16),
// fp32 elsewhere — LibTorch 1.13 converts bf16 inside its kernels there: ~30x slower than
// fp32 on AVX2-only CPUs, about fp32's rate on AVX-512 ones, never faster. The
// environment variable DS_COMPUTE_DTYPE=bf16|fp32 forces either; EngineOptions::compute_dtype
// overrides both.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <string>

namespace ds {
struct Config;
}

namespace ds::zero {

struct PrecisionPolicy {
  at::ScalarType master = at::kFloat;
  at::ScalarType working = at::kFloat;
  at::ScalarType param = at::kFloat;
  at::ScalarType reduce = at::kFloat;
  at::ScalarType grad = at::kFloat;
  bool loss_scaling = false;  // fp16: dynamic loss scale, overflow checks, skipped steps
  std::string name = "fp32";  // the training precision as the config names it (checkpoints)

  // From fp16/bf16.enabled, communication_data_type and data_types.grad_accum_dtype; the
  // working dtype is `compute` when given (it must hold the param dtype's values: fp32, or the
  // param dtype itself), else choose_compute(config)'s. Throws ds::ConfigError for an
  // impossible compute dtype.
  static PrecisionPolicy from_config(const Config& config, std::optional<at::ScalarType> compute = std::nullopt);

  // The master is the working weights themselves (fp32 training): no copy, no rounding.
  bool master_is_working() const { return working == master && param == master; }
  // The working weights hold values rounded to a narrower param dtype (bf16/fp16 storage).
  bool rounds_working() const { return param != working; }
  std::string describe() const;  // "bf16 (master fp32, working fp32, param bf16, reduce bf16)"
};

const char* dtype_name(at::ScalarType t);  // "fp32", "bf16", "fp16", ...

// The working dtype this CPU and environment give a config, and why, in words for the
// start-up line.
struct ComputeChoice {
  at::ScalarType dtype = at::kFloat;
  std::string reason;
  bool slow = false;  // forced bf16 on a CPU that emulates it
};
ComputeChoice choose_compute(const Config& config);

}  // namespace ds::zero
