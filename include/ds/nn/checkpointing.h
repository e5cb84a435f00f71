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
//
// configure() applies the config's `activation_checkpointing` section to every later call
// (the engine does it; DeepSpeed's deepspeed.checkpointing.configure): partitioned saved inputs
// across the tensor-parallel group, one contiguous buffer for them, and a profile.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace ds::checkpointing {

using Function = std::function<at::Tensor(const std::vector<at::Tensor>& inputs)>;

at::Tensor checkpoint(Function fn, const std::vector<at::Tensor>& inputs);

// The group a saved input is split across (partition_activations): this rank's index and the
// group's size, and an all-gather of every rank's equal-length 1-D piece into `out`.
struct PartitionGroup {
  int rank = 0;
  int size = 1;
  std::function<void(at::Tensor& out, const at::Tensor& piece)> all_gather;
};

struct Options {
  // partition_activations: each saved input is assumed the same on every rank of the group
  // (as a transformer block's input is under tensor parallelism); a rank keeps 1/size of it
  // and the recompute all-gathers it back. Size 1: no effect.
  PartitionGroup partition;
  // contiguous_memory_optimization: the saved inputs of up to `number_checkpoints` calls alive
  // at once live in one buffer allocated once and reused every step (no allocation per call).
  bool contiguous = false;
  int64_t number_checkpoints = 0;  // 0: not set (then contiguous is refused)
  // profile: time the checkpointed forwards, their recomputes and the nested backwards.
  bool profile = false;
};
// Applies to calls made from now on (the engine calls it; a graph already built keeps its own).
// Throws ds::ConfigError for contiguous without number_checkpoints. Returns a token for
// unconfigure.
int64_t configure(const Options& options);
// Back to the defaults, unless configure() was called again after the call that returned
// `token` (an engine undoes its own settings when it goes, never a newer engine's).
void unconfigure(int64_t token);

// Since the last reset_stats(): calls (in grad mode) and recomputations, their times (when
// profiling), and the most bytes of saved inputs alive at once on this rank.
struct Stats {
  int64_t calls = 0;
  int64_t recomputes = 0;
  double forward_s = 0, recompute_s = 0, backward_s = 0;
  int64_t saved_bytes = 0, peak_saved_bytes = 0;
  std::string describe() const;  // one line, e.g. for the engine's profile output
};
Stats stats();
void reset_stats();  // keeps saved_bytes (inputs alive now)

// How many forwards checkpoint() recomputed in this process so far (for tests and profiles).
int64_t recomputations();

// Another random stream to save with the CPU generator when a checkpointed call first runs
// and to restore around its recompute (e.g. the tensor-parallel stream, ds/tp/random.h).
void register_rng_stream(std::function<at::Tensor()> get, std::function<void(const at::Tensor&)> set);

}  // namespace ds::checkpointing
