// ds::Init: DeepSpeed's zero.Init. A model built while an Init lives never exists whole on one
// rank: each ds::zero::unit_built(module) call in its constructor gathers that unit's
// parameters into a flat buffer, broadcasts it from rank 0 and keeps only this rank's shard.
// The stage-3 engine then takes these units over instead of building its own.
//
//   ds::Config config = ds::Config::load("ds_config.json");  config.resolve(comm->size());
//   ds::Gpt model{nullptr};
//   {
//     ds::Init init(comm, config);   // does nothing unless zero_optimization.stage is 3
//     model = ds::Gpt(gpt_config);    // GptImpl calls ds::zero::unit_built per unit
//   }
//   ds::Engine engine(model.ptr(), config, comm);
//
// The units must be those the engine uses (ds::find_units, or the ones passed to it):
// otherwise the engine says which unit differs.
#pragma once

#include <memory>

#include "ds/comm/communicator.h"
#include "ds/config/config.h"
#include "ds/runtime/flat_unit.h"
#include "ds/zero/zero.h"

namespace ds {

class Init final : public zero::BuildHook {
 public:
  Init(std::shared_ptr<comm::Communicator> comm, const Config& config);
  ~Init() override;
  Init(const Init&) = delete;
  Init& operator=(const Init&) = delete;
  void unit_built(torch::nn::Module& module) override;
  bool enabled() const { return enabled_; }

 private:
  std::shared_ptr<comm::Communicator> comm_;
  bool enabled_ = false;
  zero::BuildHook* previous_ = nullptr;
};

// The unit an Init sharded whose first parameter is params[0], renamed to `spec`'s names;
// null if there is none. Throws when it holds other parameters than `spec`.
std::unique_ptr<FlatUnit> take_partitioned_unit(const UnitSpec& spec);

}  // namespace ds
