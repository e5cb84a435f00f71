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
// resolved for the data-parallel size and validated, and the engine takes over the model's
// parameters. Pass your own communicator or an already resolved ds::Config to control either.
#pragma once

#include <memory>
#include <string>

#include "ds/comm/communicator.h"
#include "ds/config/config.h"
#include "ds/runtime/engine.h"

namespace ds {

inline std::unique_ptr<Engine> initialize(std::shared_ptr<torch::nn::Module> model, Config config,
                                          std::shared_ptr<comm::Communicator> comm = nullptr,
                                          std::vector<UnitSpec> units = {}) {
  if (!comm) comm = comm::init_from_env();
  if (!config.resolved()) config.resolve(comm->size());
  return std::make_unique<Engine>(std::move(model), config, std::move(comm), std::move(units));
}

inline std::unique_ptr<Engine> initialize(std::shared_ptr<torch::nn::Module> model, const std::string& config_path,
                                          std::shared_ptr<comm::Communicator> comm = nullptr) {
  return initialize(std::move(model), Config::load(config_path), std::move(comm));
}

}  // namespace ds
