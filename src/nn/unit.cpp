#include "ds/nn/unit.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>

#include <mutex>
#include <utility>

namespace ds::nn {

namespace {

struct Registry {
  std::mutex mu;
  int next_id = 1;
  std::vector<std::pair<int, UnitHooks*>> hooks;
  BuildHook* build = nullptr;
};

Registry& registry() {
  static Registry r;
  return r;
}

// The hooks with this id, or null when its engine is gone.
UnitHooks* find_hooks(int id) {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  for (auto& [i, h] : r.hooks)
    if (i == id) return h;
  return nullptr;
}

std::pair<int, UnitHooks*> owner_of(torch::nn::Module& module, std::vector<int>& units) {
  Registry& r = registry();
  std::vector<std::pair<int, UnitHooks*>> all;
  {
    std::lock_guard<std::mutex> lock(r.mu);
    all = r.hooks;
  }
  for (auto& [id, h] : all) {
    units = h->units_of(module);
    if (!units.empty()) return {id, h};
  }
  return {0, nullptr};
}

// Identity in the forward; in the backward, before the unit's own backward runs (the gradient
// of its output arrives first), the unit is gathered again.
struct PreBackward : public torch::autograd::Function<PreBackward> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, int64_t id,
                            const std::vector<int64_t>& units) {
    ctx->saved_data["id"] = id;
    ctx->saved_data["units"] = units;
    return x;
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    if (UnitHooks* h = find_hooks(static_cast<int>(ctx->saved_data["id"].toInt()))) {
      std::vector<int> units;
      for (int64_t u : ctx->saved_data["units"].toIntVector()) units.push_back(static_cast<int>(u));
      h->pre_backward(units);
    }
    return {grads[0], at::Tensor(), at::Tensor()};
  }
};

}  // namespace

int register_hooks(UnitHooks* hooks) {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  int id = r.next_id++;
  r.hooks.emplace_back(id, hooks);
  return id;
}

void unregister_hooks(int id) {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  for (size_t i = 0; i < r.hooks.size(); ++i)
    if (r.hooks[i].first == id) {
      r.hooks.erase(r.hooks.begin() + static_cast<std::ptrdiff_t>(i));
      return;
    }
}

BuildHook* set_build_hook(BuildHook* hook) {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  return std::exchange(r.build, hook);
}

void unit_built(torch::nn::Module& module) {
  BuildHook* hook;
  {
    Registry& r = registry();
    std::lock_guard<std::mutex> lock(r.mu);
    hook = r.build;
  }
  if (hook) hook->unit_built(module);
}

at::Tensor run_unit(torch::nn::Module& module, const std::function<at::Tensor()>& f) {
  std::vector<int> units;
  auto [id, hooks] = owner_of(module, units);
  if (!hooks) return f();
  hooks->pre_forward(units);
  at::Tensor out;
  try {
    out = f();
  } catch (...) {
    hooks->post_forward(units);
    throw;
  }
  hooks->post_forward(units);
  if (!out.requires_grad() || !at::GradMode::is_enabled()) return out;
  return PreBackward::apply(out, int64_t(id), std::vector<int64_t>(units.begin(), units.end()));
}

}  // namespace ds::nn
