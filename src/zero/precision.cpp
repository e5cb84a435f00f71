#include "ds/zero/precision.h"

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

PrecisionPolicy PrecisionPolicy::from_config(const Config& c, std::optional<at::ScalarType> compute) {
  if (c.fp16.enabled && c.bf16.enabled) throw ConfigError("fp16.enabled and bf16.enabled are both true; choose one");
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
  if (compute) {
    if (*compute != at::kFloat && *compute != p.param)
      throw ConfigError(p.param == at::kFloat
                            ? ds::str("compute dtype ", dtype_name(*compute), " needs ", dtype_name(*compute),
                                      ".enabled in the config (the weights are fp32 here)")
                            : ds::str("compute dtype ", dtype_name(*compute), " cannot hold the ", p.name,
                                      " weights of this config; use fp32 or ", dtype_name(p.param)));
    p.working = *compute;
  }
  return p;
}

std::string PrecisionPolicy::describe() const {
  return ds::str(name, " (master ", dtype_name(master), ", working ", dtype_name(working), ", param ",
                 dtype_name(param), ", reduce ", dtype_name(reduce), loss_scaling ? ", loss scaling" : "", ")");
}

}  // namespace ds::zero
