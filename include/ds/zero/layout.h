// UnitLayout: what a rank keeps of one unit and how the unit's gradients and weights travel,
// as a pure function of the unit's size, the ZeRO stage, the data-parallel group and the
// precision policy. The engine derives every per-unit buffer from it; nothing else repeats
// the shard arithmetic.
//
//   ds::zero::UnitLayout l = ds::zero::plan_unit(/*numel=*/1000, {stage, dp_size, dp_rank, policy});
//   l.padded_numel;  l.own;  l.shard_params;  ...
//
//   stage  weights                 gradients between steps       master + states   after the step
//   0      full                    full (persistent)             full              -
//   1      full                    full + own chunk              own chunk         all-gather weights
//   2      full                    own chunk                     own chunk         all-gather weights
//   3      own chunk (shard)       own chunk                     own chunk         - (gathered on use)
#pragma once

#include <cstdint>

#include "ds/comm/communicator.h"
#include "ds/zero/grad_sync_mode.h"
#include "ds/zero/precision.h"

namespace ds::zero {

struct ShardPlan {
  int stage = 0;
  int dp_size = 1, dp_rank = 0;
  PrecisionPolicy precision;
  int64_t pad = 64;  // padded_numel is a multiple of pad x dp_size (kUnitPadding)
  // The optimizer reads each rank's whole local gradient on some steps (GradSync::kNone: 1-bit
  // Adam's compressed phase): stage 2 then keeps full gradients and reduces at the boundary, as
  // stage 1 does.
  bool local_grads = false;
};

struct UnitLayout {
  int64_t numel = 0, padded_numel = 0;
  // The elements of the padded buffer this rank updates: all of them at stage 0, its
  // comm::chunk_of chunk (the tensor_split layout) at stages 1-3.
  comm::Chunk own;
  bool shard_params = false;      // stage 3: between uses only the own chunk of the weights
  bool persistent_grads = false;  // stages 0-1: a full flat gradient buffer lives with the unit
  bool grad_shard = false;        // stages 1-3: an fp32 accumulator of the own chunk's gradient
  bool gather_after_step = false; // stages 1-2: the updated chunks are all-gathered into the weights
  // The fp32 master is a view of the weights (stages 0-2) or the shard (stage 3): no copy.
  bool master_is_weights = false;
  // Under a narrower param dtype the optimizer writes the updated weights, rounded, into the
  // working weights (stages 0-2) or the shard (stage 3).
  bool writes_working_copy = false;
  GradSync sync = GradSync::kAllReduce;  // the stage's standard gradient sync
  bool reduce_every_micro_batch = false;  // stages 2-3: no full gradient is kept between micro-batches
};

// Throws ds::Error for an unknown stage or an empty group.
UnitLayout plan_unit(int64_t numel, const ShardPlan& plan);

}  // namespace ds::zero
