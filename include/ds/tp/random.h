// Megatron's tensor-parallel RNG. Dropout on an activation every rank of the tensor group
// holds whole (after a row-parallel layer) must draw the same mask on every rank: that is the
// default CPU generator, seeded alike everywhere. Dropout on a split activation (this rank's
// heads' attention probabilities, its slice of the MLP) must draw a different mask on each
// rank, as the unsplit model draws different numbers for different heads: that is the
// tensor-parallel stream, seeded with seed + 2718 + tensor rank (Megatron's offset), entered
// with ForkRng.
//
//   ds::tp::seed_rng(seed, groups.tensor);          // every rank, before training
//   at::Tensor p = at::dropout(probs_of_my_heads, 0.1, true) ... inside:
//   { ds::tp::ForkRng fork; p = at::dropout(p, 0.1, true); }   // this rank's own stream
//
// The stream's state is saved and restored around an activation-checkpoint recompute
// (ds::checkpointing), so a recomputed dropout inside a fork repeats its mask.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

#include "ds/tp/mappings.h"

namespace ds::tp {

// Seeds the default CPU generator with `seed` and the tensor-parallel stream with
// seed + 2718 + this rank's tensor rank (rank 0 without a group).
void seed_rng(uint64_t seed, const Group& group);

// While alive, the default CPU generator is the tensor-parallel stream; on destruction the
// stream keeps where it got to and the default generator is back where it was. Throws
// ds::Error if seed_rng was never called.
class ForkRng {
 public:
  ForkRng();
  ~ForkRng();
  ForkRng(const ForkRng&) = delete;
  ForkRng& operator=(const ForkRng&) = delete;

 private:
  at::Tensor saved_;
};

}  // namespace ds::tp
