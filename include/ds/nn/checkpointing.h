// Activation checkpointing: DeepSpeed's deepspeed.checkpointing.checkpoint for LibTorch.
// checkpoint(fn, inputs) runs fn without keeping its intermediate activations (only the
// inputs) and runs it again inside the backward to get them, trading one more forward for the
// memory of everything fn computes.
//
//   at::Tensor y = ds::checkpointing::checkpoint([&](const std::vector<at::Tensor>& in) {
//     return block->forward(in[0]);
//   }, {x});
//
// The recomputation sees the same random numbers as the first run: the CPU generator's state
// is saved before fn runs and restored around the recompute (the generator then continues
// where the first run left it), so dropout masks repeat exactly. Gradients reach fn's inputs
// (those that require grad) and every parameter fn uses, through a nested backward as
// PyTorch's reentrant checkpoint does. Without grad mode (evaluation) it is a plain call.
// fn must be deterministic apart from the CPU generator and must not change its inputs.
#pragma once

#include <ATen/core/Tensor.h>

#include <functional>
#include <vector>

namespace ds::checkpointing {

using Function = std::function<at::Tensor(const std::vector<at::Tensor>& inputs)>;

at::Tensor checkpoint(Function fn, const std::vector<at::Tensor>& inputs);

// How many forwards checkpoint() recomputed in this process so far (for tests and profiles).
int64_t recomputations();

// Another random stream to save with the CPU generator when a checkpointed call first runs
// and to restore around its recompute (e.g. the tensor-parallel stream, ds/tp/random.h).
void register_rng_stream(std::function<at::Tensor()> get, std::function<void(const at::Tensor&)> set);

}  // namespace ds::checkpointing
