#include "ds/nn/checkpointing.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/csrc/autograd/grad_mode.h>

#include <atomic>
#include <mutex>

#include "ds/common/error.h"
#include "ds/nn/rng.h"

namespace ds::checkpointing {
namespace {

std::atomic<int64_t> recomputed{0};

struct RngStream {
  std::function<at::Tensor()> get;
  std::function<void(const at::Tensor&)> set;
};
std::mutex streams_mu;
std::vector<RngStream> streams;

std::vector<at::Tensor> stream_states() {
  std::lock_guard<std::mutex> lock(streams_mu);
  std::vector<at::Tensor> out;
  for (const auto& s : streams) out.push_back(s.get());
  return out;
}

void set_stream_states(const std::vector<at::Tensor>& states) {
  std::lock_guard<std::mutex> lock(streams_mu);
  for (size_t i = 0; i < states.size() && i < streams.size(); ++i) streams[i].set(states[i]);
}

// The backward of one checkpointed call: recompute fn on the saved inputs with grad mode on,
// then backpropagate the incoming gradient through the recomputed graph (a nested backward,
// which also accumulates the gradients of the parameters fn used).
struct RecomputeBackward : torch::autograd::Node {
  Function fn;
  std::vector<at::Tensor> inputs;  // detached; the gradient flows to those whose flag is set
  std::vector<bool> needs_grad;
  at::Tensor rng;  // the generator's state when fn first ran
  std::vector<at::Tensor> streams;  // the registered streams' states then

  std::string name() const override { return "ds::checkpointing::RecomputeBackward"; }

  torch::autograd::variable_list apply(torch::autograd::variable_list&& grads) override {
    if (!fn) throw Error("checkpoint: this checkpointed call was already backpropagated once");
    std::vector<at::Tensor> xs;
    for (size_t i = 0; i < inputs.size(); ++i) xs.push_back(inputs[i].detach().requires_grad_(needs_grad[i]));
    at::Tensor now = nn::cpu_rng_state();
    std::vector<at::Tensor> streams_now = stream_states();
    nn::set_cpu_rng_state(rng);
    set_stream_states(streams);
    at::Tensor out;
    {
      at::AutoGradMode grad(true);
      out = fn(xs);
    }
    nn::set_cpu_rng_state(now);
    set_stream_states(streams_now);
    ++recomputed;
    if (out.requires_grad()) torch::autograd::backward({out}, {grads.at(0)});
    torch::autograd::variable_list result;
    for (size_t i = 0; i < xs.size(); ++i) result.push_back(needs_grad[i] ? xs[i].grad() : at::Tensor());
    inputs.clear();  // the saved inputs are freed with the graph's use of them
    fn = nullptr;
    return result;
  }

  void release_variables() override {
    inputs.clear();
    rng = at::Tensor();
    streams.clear();
  }
};

}  // namespace

at::Tensor checkpoint(Function fn, const std::vector<at::Tensor>& inputs) {
  if (!at::GradMode::is_enabled()) return fn(inputs);
  auto node = std::make_shared<RecomputeBackward>();
  node->rng = nn::cpu_rng_state();
  node->streams = stream_states();
  at::Tensor out;
  {
    at::NoGradGuard no_grad;
    out = fn(inputs);
  }
  if (!out.defined() || !at::isFloatingType(out.scalar_type())) return out;  // nothing to differentiate
  if (out.is_view()) out = out.clone();  // autograd history cannot be set on a view
  for (const at::Tensor& x : inputs) {
    node->inputs.push_back(x.detach());
    node->needs_grad.push_back(x.defined() && x.requires_grad());
  }
  node->fn = std::move(fn);
  node->set_next_edges(torch::autograd::collect_next_edges(inputs));
  torch::autograd::set_history(out, node);
  return out;
}

int64_t recomputations() { return recomputed.load(); }

void register_rng_stream(std::function<at::Tensor()> get, std::function<void(const at::Tensor&)> set) {
  std::lock_guard<std::mutex> lock(streams_mu);
  streams.push_back({std::move(get), std::move(set)});
}

}  // namespace ds::checkpointing
