#include "ds/zero/layout.h"

#include "ds/common/error.h"
#include "ds/zero/flat_unit.h"

namespace ds::zero {

UnitLayout plan_unit(int64_t numel, const ShardPlan& p) {
  if (p.stage < 0 || p.stage > 3) throw Error(ds::str("ZeRO stage ", p.stage, " does not exist (0-3)"));
  if (p.dp_size < 1 || p.dp_rank < 0 || p.dp_rank >= p.dp_size)
    throw Error(ds::str("data-parallel rank ", p.dp_rank, " of ", p.dp_size, " does not exist"));
  UnitLayout l;
  l.numel = numel;
  l.padded_numel = round_up(numel, p.pad * p.dp_size);
  l.own = p.stage == 0 ? comm::Chunk{0, l.padded_numel} : comm::chunk_of(l.padded_numel, p.dp_size, p.dp_rank);
  l.shard_params = p.stage == 3;
  const bool full_grads = p.stage <= 1 || (p.local_grads && p.stage == 2);
  l.persistent_grads = full_grads;
  l.grad_shard = p.stage >= 1;
  l.gather_after_step = p.stage == 1 || p.stage == 2;
  l.master_is_weights = p.precision.master_is_working();
  l.writes_working_copy = !l.master_is_weights;
  l.sync = p.stage == 0 ? GradSync::kAllReduce : GradSync::kReduceScatter;
  l.reduce_every_micro_batch = !full_grads;
  return l;
}

}  // namespace ds::zero
