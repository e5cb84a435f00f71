// What a model calls so that ZeRO stage 3 can shard its parameters (DeepSpeed's module hooks
// and zero.Init, for LibTorch, whose C++ modules have no forward hooks).
//
//   class MyModelImpl : public torch::nn::Module, public ds::zero::UnitAware {
//     MyModelImpl() {
//       for (int i = 0; i < n; ++i) {
//         blocks->push_back(Block(...));
//         ds::zero::unit_built(*blocks[i]);   // under ds::zero::Init: shard it now
//       }
//     }
//     at::Tensor forward(at::Tensor x) {
//       for (auto& b : *blocks)
//         x = ds::zero::run_unit(*b, [&] { return b->as<Block>()->forward(x); });
//       return x;
//     }
//   };
//
// Without a stage-3 engine every call here is a plain call: run_unit(m, f) is f(), linear is
// a linear layer, unit_built does nothing. A model that does not derive from UnitAware still
// trains at stage 3: the engine then gathers every unit before the forward and shards them
// again between steps (with a warning), so its peak memory is that of the whole model.
#pragma once

#include <ATen/core/Tensor.h>

#include <functional>
#include <vector>

namespace torch::nn {
class Module;
}

namespace ds::zero {

// Marks a model whose forward runs each unit through run_unit (see above).
class UnitAware {
 public:
  virtual ~UnitAware() = default;
};

// Runs f() as the forward of `module` (a ZeRO unit, or any module holding unit parameters):
// under a stage-3 engine the unit is gathered first (and the next ones prefetched), released
// when f returns, and gathered again before its backward.
at::Tensor run_unit(torch::nn::Module& module, const std::function<at::Tensor()>& f);

// y = x W^T + b, saving W itself for the backward (not a transposed view of it, as
// torch::nn::functional::linear does): a view would keep a released stage-3 parameter's full
// storage alive until the backward. Same results as torch's linear.
at::Tensor linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias = {});

// A model's constructor calls it after it built (and initialised) each unit's module. Under a
// ds::Init (ds/runtime/zero_init.h) the unit's parameters are broadcast from rank 0 and
// sharded at once, so the whole model never exists on one rank; otherwise it does nothing.
void unit_built(torch::nn::Module& module);

// The stage-3 engine's side of the calls above (ds::ParamCoordinator implements it).
class UnitHooks {
 public:
  virtual ~UnitHooks() = default;
  // The units holding `module`'s parameters (none: the module is not this engine's).
  virtual std::vector<int> units_of(torch::nn::Module& module) = 0;
  virtual void pre_forward(const std::vector<int>& units) = 0;
  virtual void post_forward(const std::vector<int>& units) = 0;
  virtual void pre_backward(const std::vector<int>& units) = 0;
};
// A registered hook set is asked first by run_unit; ids let a backward find it again (a graph
// can outlive its engine: then the call does nothing).
int register_hooks(UnitHooks* hooks);
void unregister_hooks(int id);

class BuildHook {
 public:
  virtual ~BuildHook() = default;
  virtual void unit_built(torch::nn::Module& module) = 0;
};
// At most one at a time (ds::Init); returns the previous one.
BuildHook* set_build_hook(BuildHook* hook);

}  // namespace ds::zero
