// An operation computed outside autograd whose gradient is given as a function: the
// tensor-parallel mappings and the vocab-parallel cross-entropy use it.
#pragma once

#include <ATen/ATen.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/csrc/autograd/grad_mode.h>

#include <functional>
#include <string>

namespace ds::tp::detail {

using Backward = std::function<at::Tensor(const at::Tensor& grad_output)>;

struct LambdaBackward : torch::autograd::Node {
  Backward backward;
  std::string label;
  std::string name() const override { return label; }
  torch::autograd::variable_list apply(torch::autograd::variable_list&& grads) override {
    if (!grads.at(0).defined()) return {at::Tensor()};
    return {backward(grads[0])};
  }
  void release_variables() override { backward = nullptr; }
};

// `out` (computed from `input` without autograd) with the gradient backward(grad of out)
// flowing to `input`. `out` must be a fresh tensor (not a view).
inline at::Tensor with_backward(at::Tensor out, const at::Tensor& input, Backward backward, const char* label) {
  if (!at::GradMode::is_enabled() || !input.requires_grad()) return out;
  if (out.is_view()) out = out.clone();  // autograd history cannot be set on a view
  auto node = std::make_shared<LambdaBackward>();
  node->backward = std::move(backward);
  node->label = label;
  node->set_next_edges(torch::autograd::collect_next_edges(input));
  torch::autograd::set_history(out, node);
  return out;
}

}  // namespace ds::tp::detail
