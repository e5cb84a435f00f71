// ds::nn::linear: saves the weight itself for the backward (see ds/nn/linear.h).
#include "ds/nn/linear.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>

namespace ds::nn {

namespace {

// The gradients of y = x W^T (+ b) from the saved x and W.
torch::autograd::variable_list linear_backward(torch::autograd::AutogradContext* ctx, const at::Tensor& g, bool bias) {
  auto saved = ctx->get_saved_variables();
  const at::Tensor& x = saved[0];
  const at::Tensor& w = saved[1];
  const int64_t out = w.size(0), in = w.size(1);
  at::Tensor g2 = g.reshape({-1, out});
  torch::autograd::variable_list grads = {ctx->needs_input_grad(0) ? at::matmul(g, w) : at::Tensor(),
                                          ctx->needs_input_grad(1) ? x.reshape({-1, in}).t().mm(g2).t() : at::Tensor()};
  if (bias) grads.push_back(ctx->needs_input_grad(2) ? g2.sum(0) : at::Tensor());
  return grads;
}

struct Linear : public torch::autograd::Function<Linear> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, const at::Tensor& w,
                            const at::Tensor& b) {
    ctx->save_for_backward({x, w});
    return at::linear(x, w, b);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    return linear_backward(ctx, grads[0], true);
  }
};

struct LinearNoBias : public torch::autograd::Function<LinearNoBias> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, const at::Tensor& w) {
    ctx->save_for_backward({x, w});
    return at::linear(x, w);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    return linear_backward(ctx, grads[0], false);
  }
};

}  // namespace

at::Tensor linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  return bias.defined() ? Linear::apply(x, weight, bias) : LinearNoBias::apply(x, weight);
}

}  // namespace ds::nn
