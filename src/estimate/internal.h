// The estimator's parts (memory.cpp, time.cpp), for each other.
#pragma once

#include "ds/estimate/estimate.h"
#include "ds/optim/optimizer.h"
#include "ds/zero/precision.h"

namespace ds::estimate {

// data: every rank of the data axis (ZeRO's group; sequence ranks included); sequence: the
// ranks that split each sequence (Ulysses; they read the same samples).
struct ParallelSizes {
  int pipeline = 1, tensor = 1, data = 1, sequence = 1;
  int model_ranks() const { return pipeline * tensor * sequence; }  // the ranks of one sample
};
// From the config's pipeline and tensor_parallel sections over layout.world() ranks.
ParallelSizes parallel_sizes(const Config& config, const Layout& layout);
std::vector<StageShare> stage_shares(const Config& config, const ModelShape& shape, const Layout& layout);
// Whether the blocks are recomputed: the layout says so, or a pipeline's
// activation_checkpoint_interval does (its layers are checkpointed in groups of that many; the
// estimate counts every block checkpointed).
bool checkpointed(const Config& config, const Layout& layout);

// Each pipeline stage's ranks. `optimizer` is config.optimizer's, made once per estimate.
std::vector<Memory> estimate_memory(const Config& config, const ModelShape& shape, const Layout& layout, const Rates& rates,
                       const zero::PrecisionPolicy& precision, const optim::FlatOptimizer& optimizer);
int64_t activation_bytes(const ModelShape& shape, const Layout& layout, const Config& config,
                         const zero::PrecisionPolicy& precision, bool checkpointed, const StageShare& share);
StepTime estimate_time(const Config& config, const ModelShape& shape, const Layout& layout, const Rates& rates,
                       const zero::PrecisionPolicy& precision, const Memory& memory,
                       const optim::FlatOptimizer& optimizer);

}  // namespace ds::estimate
