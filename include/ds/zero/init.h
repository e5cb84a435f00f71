// ds::zero::Init: DeepSpeed's zero.Init. A model built while an Init is open never exists
// whole on one rank: each ds::nn::unit_built(module) call in its constructor flattens that
// unit's parameters, broadcasts them from the data-parallel group's first rank and keeps
// only this rank's shard. The units are then handed to the engine explicitly.
//
//   auto groups = ds::comm::ParallelGroups::create(world, config);   // config resolved
//   ds::zero::Init init(groups.data, config);   // collects nothing unless zero stage is 3
//   ds::Gpt model(gpt_config);                  // GptImpl calls ds::nn::unit_built per unit
//   ds::EngineOptions options;
//   options.sharded_units = init.take_units();  // closes the Init
//   auto engine = ds::initialize(model.ptr(), config, groups, std::move(options));
//
// The units must be those the engine uses (ds::zero::find_units, or the ones passed to it):
// otherwise the engine says which unit differs. Units an Init still holds when it is
// destroyed are destroyed with it (the model's sharded parameters then stay empty).
#pragma once

#include <memory>
#include <vector>

#include "ds/comm/communicator.h"
#include "ds/config/config.h"
#include "ds/nn/unit.h"
#include "ds/zero/flat_unit.h"

namespace ds::zero {

using ShardedUnits = std::vector<std::unique_ptr<FlatUnit>>;

struct InitOptions {
  at::ScalarType dtype = at::kFloat;        // the units' working dtype
  at::ScalarType shard_dtype = at::kFloat;  // what each rank keeps and the all-gathers send
};

class Init final : public nn::BuildHook {
 public:
  // `data_group`: the communicator the units are sharded over (the world when there is no
  // pipeline or tensor parallelism). Active only when zero_optimization.stage is 3. The
  // dtypes default to the config's precision (ds::PrecisionPolicy::from_config).
  Init(std::shared_ptr<comm::Communicator> data_group, const Config& config);
  Init(std::shared_ptr<comm::Communicator> data_group, const Config& config, InitOptions options);
  ~Init() override;
  Init(const Init&) = delete;
  Init& operator=(const Init&) = delete;

  void unit_built(torch::nn::Module& module) override;
  bool enabled() const { return enabled_; }
  // Stops collecting and hands over the units sharded so far, in build order.
  ShardedUnits take_units();

 private:
  void close();

  std::shared_ptr<comm::Communicator> comm_;
  InitOptions options_;
  bool enabled_ = false, open_ = false;
  nn::BuildHook* previous_ = nullptr;
  ShardedUnits units_;
};

// The engine's side of the hand-over: the unit among `sharded` whose parameters are
// spec.params (same tensors, same order), renamed to spec's names and removed from `sharded`;
// null if none holds spec's first parameter. Throws when a unit holds some of spec's
// parameters but not exactly them.
std::unique_ptr<FlatUnit> take_matching_unit(ShardedUnits& sharded, const UnitSpec& spec);

}  // namespace ds::zero
