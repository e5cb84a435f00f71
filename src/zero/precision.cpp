#include "ds/zero/precision.h"

#include <cstdlib>

#include "ds/common/cpu.h"
#include "ds/common/error.h"
#include "ds/config/config.h"

namespace ds::zero {

const char* dtype_name(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return "fp32";
    case at::kBFloat16: return "bf16";
    case at::kHalf: return "fp16";
    case at::kDouble: return "fp64";
    default: return c10::toString(t);
  }
}

ComputeChoice choose_compute(const Config& c) {
  const CpuFeatures& cpu = cpu_features();
  const char* env = std::getenv("DS_COMPUTE_DTYPE");
  const std::string forced = env && *env ? env : "auto";
  if (forced != "auto" && forced != "bf16" && forced != "fp32")
    throw ConfigError(ds::str("DS_COMPUTE_DTYPE=", forced, ": expected bf16, fp32 or auto"));
  ComputeChoice out;
  if (c.fp16.enabled) {
    if (forced == "bf16") throw ConfigError("DS_COMPUTE_DTYPE=bf16 needs bf16.enabled; the config trains fp16");
    out.reason = ds::str("fp16 is a storage and communication format here: LibTorch 1.13 has no fp16 GEMM on CPUs (",
                         cpu.native_fp16() ? "this CPU has fp16 dot products, unused" : "nor has this CPU fp16 dot products",
                         ")");
    return out;
  }
  if (!c.bf16.enabled) {
    if (forced == "bf16") throw ConfigError("DS_COMPUTE_DTYPE=bf16 needs bf16.enabled in the config");
    out.reason = "fp32 training";
    return out;
  }
  if (forced == "fp32") {
    out.reason = "DS_COMPUTE_DTYPE=fp32 (bf16 is a storage and communication format)";
  } else if (forced == "bf16") {
    out.dtype = at::kBFloat16;
    out.slow = !cpu.native_bf16();
    out.reason = cpu.native_bf16() ? "DS_COMPUTE_DTYPE=bf16"
                                   : ds::str("DS_COMPUTE_DTYPE=bf16 on a CPU without native bf16 (", cpu.describe(),
                                             "): LibTorch converts to fp32 inside its kernels here, measured ",
                                             cpu.avx512bw ? "0.93-1.0x fp32's GEMM rate and 0.96x its tokens/s on an AVX-512 Xeon"
                                                          : "30x slower than fp32 GEMMs on an AVX2-only EPYC");
  } else if (cpu.native_bf16()) {
    out.dtype = at::kBFloat16;
    out.reason = ds::str("the CPU has native bf16 dot products (", cpu.describe(), ")");
  } else {
    out.reason = ds::str("this CPU has no native bf16 dot products (", cpu.describe(),
                         "), so GEMMs run in fp32 on bf16-valued weights; DS_COMPUTE_DTYPE=bf16 forces bf16");
  }
  return out;
}

PrecisionPolicy PrecisionPolicy::from_config(const Config& c, std::optional<at::ScalarType> compute) {
  if (c.fp16.enabled && c.bf16.enabled) throw ConfigError("fp16.enabled and bf16.enabled are both true; choose one");
  if (!compute) compute = choose_compute(c).dtype;
  PrecisionPolicy p;
  if (c.bf16.enabled) p.param = at::kBFloat16, p.name = "bf16";
  if (c.fp16.enabled) p.param = at::kHalf, p.name = "fp16", p.loss_scaling = true;
  p.reduce = p.param;
  if (c.communication_data_type) {
    switch (*c.communication_data_type) {
      case DataType::kFp32: p.reduce = at::kFloat; break;
      case DataType::kFp16: p.reduce = at::kHalf; break;
      case DataType::kBf16: p.reduce = at::kBFloat16; break;
    }
  }
  if (*compute != at::kFloat && *compute != p.param)
    throw ConfigError(p.param == at::kFloat
                          ? ds::str("compute dtype ", dtype_name(*compute), " needs ", dtype_name(*compute),
                                    ".enabled in the config (the weights are fp32 here)")
                          : ds::str("compute dtype ", dtype_name(*compute), " cannot hold the ", p.name,
                                    " weights of this config; use fp32 or ", dtype_name(p.param)));
  p.working = *compute;
  // Gradient shards: in the working dtype when it is narrower (DeepSpeed's mixed-precision
  // memory: 2 bytes per element), unless data_types.grad_accum_dtype asks for fp32.
  p.grad = p.working;
  if (c.data_types.grad_accum_dtype) {
    switch (*c.data_types.grad_accum_dtype) {
      case DataType::kFp32: p.grad = at::kFloat; break;
      case DataType::kBf16: p.grad = at::kBFloat16; break;
      case DataType::kFp16: p.grad = at::kHalf; break;
    }
  }
  return p;
}

std::string PrecisionPolicy::describe() const {
  return ds::str(name, " (master ", dtype_name(master), ", working ", dtype_name(working), ", param ",
                 dtype_name(param), ", reduce ", dtype_name(reduce), ", grad ", dtype_name(grad),
                 loss_scaling ? ", loss scaling" : "", ")");
}

}  // namespace ds::zero
