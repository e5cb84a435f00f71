// The flops profiler's counting: a thread-local RecordFunction callback builds the scope tree
// and prices each outermost ATen op (see flops_profiler.h).
#include "ds/profiling/flops_profiler.h"

#include <ATen/ATen.h>
#include <ATen/record_function.h>
#include <torch/nn/module.h>

#include <chrono>
#include <unordered_map>
#include <unordered_set>

#include "ds/common/error.h"

namespace ds::profiling {

using Clock = std::chrono::steady_clock;

struct FlopsProfiler::State {
  struct Node {
    std::string name;  // dotted path
    int depth = 0;
    size_t parent = 0;
    std::unordered_map<std::string, size_t> child_of;  // scope name -> node
    std::vector<size_t> children;
    double flops = 0, macs = 0;  // this node's own ops
    double latency_s = 0;
    int64_t calls = 0;
    std::unordered_set<const c10::TensorImpl*> params;
  };
  std::unordered_map<const c10::TensorImpl*, int64_t> param_numel;
  int64_t total_params = 0;
  std::vector<Node> nodes;
  std::vector<size_t> stack;  // open scopes; [0] is the root
  int priced_depth = 0;       // > 0: inside a priced op, whose parts are not priced again
  int backward_depth = 0;     // > 0: inside an autograd node
  double backward_flops = 0, backward_macs = 0;
  std::map<std::string, double> forward_by_op, backward_by_op;
  double elapsed_s = 0, forward_s = -1;
  Clock::time_point started;

  explicit State(std::string root) {
    nodes.emplace_back();
    nodes[0].name = std::move(root);
    stack = {0};
  }
};

namespace {

// The profiler counting on this thread (callbacks are plain functions).
thread_local FlopsProfiler::State* active = nullptr;

enum class Event { kScope, kOp, kBackward };

struct Context : at::ObserverContext {
  Event event;
  Clock::time_point start;
  explicit Context(Event e) : event(e), start(Clock::now()) {}
};

std::unique_ptr<at::ObserverContext> start_event(FlopsProfiler::State* s, const at::RecordFunction& fn) {
  switch (fn.scope()) {
    case at::RecordScope::BACKWARD_FUNCTION:
      ++s->backward_depth;
      return std::make_unique<Context>(Event::kBackward);
    case at::RecordScope::USER_SCOPE: {
      if (s->backward_depth > 0 || s->priced_depth > 0) return nullptr;  // a recomputed forward: backward work
      auto& parent = s->nodes[s->stack.back()];
      const std::string name = fn.name();
      size_t id;
      auto it = parent.child_of.find(name);
      if (it != parent.child_of.end()) {
        id = it->second;
      } else {
        id = s->nodes.size();
        FlopsProfiler::State::Node node;
        node.name = s->stack.size() == 1 ? name : parent.name + "." + name;
        node.depth = parent.depth + 1;
        node.parent = s->stack.back();
        s->nodes[s->stack.back()].child_of.emplace(name, id);
        s->nodes[s->stack.back()].children.push_back(id);
        s->nodes.push_back(std::move(node));
      }
      s->stack.push_back(id);
      return std::make_unique<Context>(Event::kScope);
    }
    case at::RecordScope::FUNCTION: {
      if (s->priced_depth > 0) return nullptr;
      const auto inputs = fn.inputs();
      if (s->backward_depth == 0) {  // which parameters this module reads
        auto& node = s->nodes[s->stack.back()];
        for (const auto& v : inputs)
          if (v.isTensor() && v.toTensor().defined()) {
            const c10::TensorImpl* impl = v.toTensor().unsafeGetTensorImpl();
            auto it = s->param_numel.find(impl);
            if (it == s->param_numel.end()) continue;
            node.params.insert(impl);
            // ZeRO-3 keeps released parameters empty: their size is known once gathered
            it->second = std::max(it->second, v.toTensor().numel());
          }
      }
      OpCost cost = op_cost(fn.name(), inputs);
      if (!cost.known) return nullptr;
      if (s->backward_depth > 0) {
        s->backward_flops += cost.flops, s->backward_macs += cost.macs;
        s->backward_by_op[fn.name()] += cost.flops;
      } else {
        auto& node = s->nodes[s->stack.back()];
        node.flops += cost.flops, node.macs += cost.macs;
        s->forward_by_op[fn.name()] += cost.flops;
      }
      ++s->priced_depth;
      return std::make_unique<Context>(Event::kOp);
    }
    default:
      return nullptr;
  }
}

// Never throws into the model's ops: an op the profiler cannot price is not counted.
std::unique_ptr<at::ObserverContext> on_start(const at::RecordFunction& fn) {
  FlopsProfiler::State* s = active;
  if (!s) return nullptr;
  try {
    return start_event(s, fn);
  } catch (const std::exception&) {
    return nullptr;
  }
}

void on_end(const at::RecordFunction&, at::ObserverContext* ctx) {
  FlopsProfiler::State* s = active;
  auto* c = static_cast<Context*>(ctx);
  if (!s || !c) return;
  switch (c->event) {
    case Event::kBackward:
      --s->backward_depth;
      break;
    case Event::kOp:
      --s->priced_depth;
      break;
    case Event::kScope: {
      auto& node = s->nodes[s->stack.back()];
      node.latency_s += std::chrono::duration<double>(Clock::now() - c->start).count();
      ++node.calls;
      if (s->stack.size() > 1) s->stack.pop_back();
      break;
    }
  }
}

}  // namespace

FlopsProfiler::FlopsProfiler(std::shared_ptr<torch::nn::Module> model, std::string name)
    : state_(std::make_unique<State>(name.empty() && model ? model->name() : name)) {
  if (!model) throw Error("flops profiler: no model");
  for (const auto& p : model->parameters()) {
    if (state_->param_numel.emplace(p.unsafeGetTensorImpl(), p.numel()).second) state_->total_params += p.numel();
  }
}

FlopsProfiler::~FlopsProfiler() { stop(); }

void FlopsProfiler::start() {
  if (running()) return;
  if (active) throw Error("flops profiler: another profiler is counting on this thread");
  active = state_.get();
  state_->started = Clock::now();
  handle_ = at::addThreadLocalCallback(at::RecordFunctionCallback(on_start, on_end)
                                           .needsInputs(true)
                                           .scopes({at::RecordScope::FUNCTION, at::RecordScope::USER_SCOPE,
                                                    at::RecordScope::BACKWARD_FUNCTION}));
}

void FlopsProfiler::stop() {
  if (!running()) return;
  at::removeCallback(handle_);
  handle_ = 0;
  active = nullptr;
  state_->elapsed_s += std::chrono::duration<double>(Clock::now() - state_->started).count();
  state_->stack.resize(1);  // a scope left open by an exception
  state_->priced_depth = state_->backward_depth = 0;
}

void FlopsProfiler::set_forward_seconds(double s) { state_->forward_s = s; }

void FlopsProfiler::set_parameter_count(int64_t n) { state_->total_params = n; }

Profile FlopsProfiler::profile() const {
  const State& s = *state_;
  Profile p;
  p.modules.resize(s.nodes.size());
  // Children come after their parents: fold the totals bottom-up.
  std::vector<std::unordered_set<const c10::TensorImpl*>> params(s.nodes.size());
  for (size_t i = s.nodes.size(); i-- > 0;) {
    const auto& n = s.nodes[i];
    ModuleStats& m = p.modules[i];
    m.name = n.name, m.depth = n.depth, m.children = n.children, m.latency_s = n.latency_s, m.calls = n.calls;
    m.flops += n.flops, m.macs += n.macs;
    params[i].insert(n.params.begin(), n.params.end());
    for (const auto* impl : params[i]) m.params += s.param_numel.at(impl);
    if (i > 0) {
      p.modules[n.parent].flops += m.flops, p.modules[n.parent].macs += m.macs;
      params[n.parent].insert(params[i].begin(), params[i].end());
    }
  }
  ModuleStats& root = p.modules[0];
  if (s.total_params > 0) root.params = s.total_params;  // else: the parameters read, as any module's
  root.latency_s = s.forward_s >= 0 ? s.forward_s : s.elapsed_s;
  root.calls = std::max<int64_t>(root.calls, 1);
  p.forward_flops = root.flops, p.forward_macs = root.macs;
  p.backward_flops = s.backward_flops, p.backward_macs = s.backward_macs;
  p.elapsed_s = s.elapsed_s + (running() ? std::chrono::duration<double>(Clock::now() - s.started).count() : 0.0);
  p.forward_flops_by_op = s.forward_by_op, p.backward_flops_by_op = s.backward_by_op;
  return p;
}

double measure_gemm_flops(c10::ScalarType dtype, int64_t n, double seconds) {
  at::Tensor a = at::randn({n, n}).to(dtype), b = at::randn({n, n}).to(dtype);
  at::Tensor c = at::mm(a, b);  // warm-up
  int64_t products = 0;
  const auto start = Clock::now();
  double elapsed = 0;
  do {
    at::mm_out(c, a, b);
    ++products;
    elapsed = std::chrono::duration<double>(Clock::now() - start).count();
  } while (elapsed < seconds);
  return 2.0 * double(n) * double(n) * double(n) * double(products) / elapsed;
}

}  // namespace ds::profiling
