// The default CPU generator's state (torch::manual_seed's), read and written under its lock.
#pragma once

#include <ATen/core/Tensor.h>

namespace ds::nn {

at::Tensor cpu_rng_state();
void set_cpu_rng_state(const at::Tensor& state);

}  // namespace ds::nn
