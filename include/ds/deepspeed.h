// deepspeed.cpp in one include: DeepSpeed's entry point for a LibTorch model.
//
//   #include <ds/deepspeed.h>
//   auto engine = ds::initialize(model.ptr(), "ds_config.json");   // ranks from the environment
//   for (...) {
//     auto loss = engine->forward([&] { return loss_fn(model->forward(x), y); });
//     engine->backward(loss);
//     engine->step();
//   }
//
// Like deepspeed.initialize(model=..., config=...): the communicator comes from the launcher's
// environment (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT, or mpirun's), the config is read,
// resolved for the world size and validated, the rank groups of its parallel layout are
// created, and the engine takes over the model's parameters. Pass your own communicator,
// groups, or an already resolved ds::Config to control any of them.
//
// With ZeRO stage 3 and ds::zero::Init, create the groups first, so that the Init shards over
// the same data-parallel group the engine uses:
//
//   auto world = ds::comm::init_from_env();
//   config.resolve(world->size());
//   auto groups = ds::parallel_groups(world, config);
//   ds::zero::Init init(groups.data, config);
//   MyModel model(...);
//   ds::EngineOptions options;
//   options.sharded_units = init.take_units();
//   auto engine = ds::initialize(model.ptr(), config, groups, std::move(options));
#pragma once

#include <memory>
#include <string>

#include "ds/comm/agreement.h"
#include "ds/comm/communicator.h"
#include "ds/comm/topology.h"
#include "ds/config/config.h"
#include "ds/runtime/engine.h"

namespace ds {

// The rank groups of `config`'s parallel layout (resolved for world->size() ranks): pipe x
// data x tensor, as DeepSpeed lays them out, with sequence_parallel_size consecutive data
// ranks in each sequence group. Collective over `world`; first the ranks check
// that they all have the same config (one line naming the first difference otherwise).
inline comm::ParallelGroups parallel_groups(std::shared_ptr<comm::Communicator> world, const Config& config) {
  if (!config.resolved()) throw ConfigError("parallel_groups needs a resolved config: call config.resolve(world_size) first");
  // Ranks with other configs would create other groups (and hang in their rendezvous).
  comm::check_ranks_agree(*world, "the config", config.fingerprint());
  const int pipe = int(config.parallel.pipeline_stages), tensor = int(config.parallel.tensor_parallel_size);
  const int world_size = world->size(), sequence = int(config.parallel.sequence_parallel_size);
  return comm::ParallelGroups::create(std::move(world), comm::Topology::for_world(world_size, pipe, tensor, sequence));
}

inline std::unique_ptr<Engine> initialize(std::shared_ptr<torch::nn::Module> model, const Config& config,
                                          comm::ParallelGroups groups, EngineOptions options = {}) {
  return std::make_unique<Engine>(std::move(model), config, std::move(groups), std::move(options));
}

inline std::unique_ptr<Engine> initialize(std::shared_ptr<torch::nn::Module> model, Config config,
                                          std::shared_ptr<comm::Communicator> comm = nullptr,
                                          EngineOptions options = {}) {
  if (!comm) comm = comm::init_from_env();
  if (!config.resolved()) config.resolve(comm->size());
  comm::ParallelGroups groups = parallel_groups(std::move(comm), config);
  return initialize(std::move(model), config, std::move(groups), std::move(options));
}

inline std::unique_ptr<Engine> initialize(std::shared_ptr<torch::nn::Module> model, const std::string& config_path,
                                          std::shared_ptr<comm::Communicator> comm = nullptr) {
  return initialize(std::move(model), Config::load(config_path), std::move(comm));
}

}  // namespace ds
