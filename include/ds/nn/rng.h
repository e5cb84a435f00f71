// The default CPU generator's state (torch::manual_seed's), read and written under its lock.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace ds::nn {

at::Tensor cpu_rng_state();
void set_cpu_rng_state(const at::Tensor& state);
void seed_cpu_rng(uint64_t seed);
// One 64-bit number from the generator (it moves on by that draw).
uint64_t draw_cpu_random64();

}  // namespace ds::nn
