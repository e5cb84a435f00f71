// What a model calls so that ZeRO stage 3 can shard its parameters: DeepSpeed's module hooks
// and zero.Init, for LibTorch, whose C++ modules have no forward hooks.
//
//   class MyModelImpl : public torch::nn::Module, public ds::nn::UnitAware {
//     MyModelImpl() {
//       for (int i = 0; i < n; ++i) {
//         blocks->push_back(Block(...));
//         ds::nn::unit_built(*blocks[i]);     // under ds::zero::Init: shard it now
//       }
//     }
//     at::Tensor forward(at::Tensor x) {
//       for (auto& b : *blocks)
//         x = ds::nn::run_unit(*b, [&] { return b->as<Block>()->forward(x); });
//       return x;
//     }
//   };
//
// Without a stage-3 engine every call here is a plain call: run_unit(m, f) is f() and
// unit_built does nothing. Linear layers should use ds::nn::linear (ds/nn/linear.h). A model
// that does not derive from UnitAware still trains at stage 3: the engine then gathers every
// unit before the forward and shards them again between steps (with a warning), so its peak
// memory is that of the whole model.
//
// The registries below are process-wide because LibTorch gives a module no hooks: run_unit
// must find the engine that owns a module, and unit_built the ds::zero::Init being built
// under. Each entry lives exactly as long as its engine or Init.
#pragma once

#include <ATen/core/Tensor.h>

#include <functional>
#include <vector>

namespace torch::nn {
class Module;
}

namespace ds::nn {

// Marks a model whose forward runs each unit through run_unit (see above).
class UnitAware {
 public:
  virtual ~UnitAware() = default;
};

// Runs f() as the forward of `module` (a ZeRO unit, or any module holding unit parameters):
// under a stage-3 engine the unit is gathered first (and the next ones prefetched), released
// when f returns, and gathered again before its backward.
at::Tensor run_unit(torch::nn::Module& module, const std::function<at::Tensor()>& f);

// A model's constructor calls it after it built (and initialised) each unit's module. Under a
// ds::zero::Init the unit's parameters are broadcast from the data-parallel group's first
// rank and sharded at once, so the whole model never exists on one rank; otherwise it does
// nothing.
void unit_built(torch::nn::Module& module);

// The stage-3 engine's side of run_unit (ds::zero::ParamCoordinator implements it).
class UnitHooks {
 public:
  virtual ~UnitHooks() = default;
  // The units holding `module`'s parameters (none: the module is not this engine's).
  virtual std::vector<int> units_of(torch::nn::Module& module) = 0;
  virtual void pre_forward(const std::vector<int>& units) = 0;
  virtual void post_forward(const std::vector<int>& units) = 0;
  virtual void pre_backward(const std::vector<int>& units) = 0;
};
// run_unit asks the registered hook sets in turn; the id lets a backward find its set again
// (a graph can outlive its engine: then the call does nothing).
int register_hooks(UnitHooks* hooks);
void unregister_hooks(int id);

// ds::zero::Init's side of unit_built.
class BuildHook {
 public:
  virtual ~BuildHook() = default;
  virtual void unit_built(torch::nn::Module& module) = 0;
};
// At most one at a time; returns the previous one.
BuildHook* set_build_hook(BuildHook* hook);

}  // namespace ds::nn
