// EnginePlan: everything the engine takes from the config, decided in one place before a
// buffer is allocated — the ZeRO stage, the precision policy, how gradients are reduced, how
// stage 3 gathers, what is swapped to disk — and every setting the engine cannot honour,
// refused with the key's path.
//
//   ds::EnginePlan plan = ds::plan_engine(config, groups);   // throws ds::ConfigError
//   plan.precision.describe();  plan.reduce.bucket_elements;  plan.swap_optimizer.has_value();
#pragma once

#include <optional>
#include <string>

#include "ds/comm/topology.h"
#include "ds/config/config.h"
#include "ds/offload/optimizer_swapper.h"
#include "ds/offload/param_swapper.h"
#include "ds/zero/coordinator.h"
#include "ds/zero/grad_sync.h"
#include "ds/zero/layout.h"
#include "ds/zero/precision.h"

namespace ds {

struct EnginePlan {
  int stage = 0;
  zero::PrecisionPolicy precision;
  std::string compute_reason;             // why the working dtype is what it is (the start-up line)
  bool compute_slow = false;              // bf16 forced on a CPU that emulates it
  zero::ShardPlan shard;                  // the stage, the data-parallel group and the policy
  zero::GradSync sync = zero::GradSync::kAllReduce;  // the stage's standard gradient sync
  zero::GradReducerOptions reduce;        // on_packed is the engine's to set
  zero::CoordinatorOptions gather;        // stage 3; the store and the secondary group are the engine's to set
  int hpz = 1;                            // zero_hpz_partition_size: the secondary group's ranks (1: none)
  std::string hpz_note;                   // why a zero_hpz_partition_size > 1 is off (the start-up warning)
  std::optional<offload::SwapOptions> swap_optimizer;  // offload_optimizer.device "nvme"
  std::optional<offload::ParamSwapOptions> swap_params;  // offload_param.device "nvme"
  double gradient_clipping = 0.0;
  int64_t allgather_bucket_elements = 500'000'000;  // stages 1-2: weights in flight after a step
};

// `config` must be resolved for groups.world's size. `compute` overrides the working dtype
// (see zero::PrecisionPolicy).
// The offload settings this engine can honour (stage, precision, optimizer); ds::ConfigError
// otherwise.
void check_offload(const Config& config);
// Everything of a resolved config the engine refuses whatever the groups (check_offload, the
// pipeline's limits, keys it cannot honour); ds::ConfigError naming the key. plan_engine
// checks it; ds-estimate too, so a layout the engine refuses is not estimated.
void check_config(const Config& config);
// ZeRO++'s keys: what they need of the stage and the optimizer (check_config calls it), and
// whether the secondary group divides `data_ranks` data-parallel ranks.
void check_zero_plus_plus(const Config& config);
void check_hpz(const Config& config, int data_ranks);
// The ranks of hpZ's secondary groups over `data_ranks` data-parallel ranks: 1 (no copies)
// unless zero_hpz_partition_size is more than 1 and fewer than all of them (over all of them
// the copies would be gathered over the same ranks as the shards). The engine and ds-estimate.
int hpz_ranks(const Config& config, int data_ranks);

// `quantization_group` > 0 replaces ZeRO++'s values per scale (EngineOptions::quantization_group).
EnginePlan plan_engine(const Config& config, const comm::ParallelGroups& groups,
                       std::optional<at::ScalarType> compute = std::nullopt, int64_t quantization_group = 0);

}  // namespace ds
