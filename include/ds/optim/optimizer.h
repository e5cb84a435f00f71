// Optimizers over flat fp32 master tensors (one per unit, or one shard of it under ZeRO).
// The state lives in tensors the caller owns (so ZeRO can shard it and checkpoints can save
// it); the optimizer object holds only hyper-parameters (the config's `optimizer` section).
//
//   auto opt = ds::make_optimizer(config.optimizer);
//   auto state = opt->init_state(master.numel());
//   opt->step(master, grad, state, /*step=*/1, /*lr=*/1e-3);
#pragma once

#include <ATen/core/Tensor.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "ds/config/optimizer.h"

namespace ds {

class FlatOptimizer {
 public:
  virtual ~FlatOptimizer() = default;
  virtual std::string name() const = 0;
  // Zero-initialised state tensors for a flat parameter of n elements.
  virtual std::vector<at::Tensor> init_state(int64_t n) const = 0;
  // One name per init_state() tensor, torch.optim's (exp_avg, exp_avg_sq, momentum_buffer,
  // sum): checkpoints store the states under these names.
  virtual std::vector<std::string> state_names() const = 0;
  // One update. `step` counts this tensor's optimizer steps from 1 (bias correction); `lr`
  // and, when given, `beta1` (OneCycle's momentum cycling) come from the scheduler.
  virtual void step(at::Tensor& param, const at::Tensor& grad, std::vector<at::Tensor>& state, int64_t step,
                    double lr, std::optional<double> beta1 = std::nullopt) = 0;
  const OptimizerConfig& config() const { return config_; }

 protected:
  explicit FlatOptimizer(OptimizerConfig c) : config_(std::move(c)) {}
  OptimizerConfig config_;
};

// Adam/AdamW on the SIMD CPU kernels (or, with "torch_adam": true, torch.optim's arithmetic in
// ATen ops), Adagrad and Lion on the kernels, SGD in ATen ops. Throws ds::ConfigError for a
// type or hyper-parameter it cannot run.
std::unique_ptr<FlatOptimizer> make_optimizer(const OptimizerConfig& config);

}  // namespace ds
