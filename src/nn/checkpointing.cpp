#include "ds/nn/checkpointing.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/csrc/autograd/grad_mode.h>

#include <algorithm>
#include <cstdio>
#include <atomic>
#include <chrono>
#include <mutex>
#include <optional>

#include "ds/common/error.h"
#include "ds/common/strings.h"
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

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// The configured options, the statistics, and the contiguous buffer's slots.
struct State {
  std::mutex mu;
  Options options;
  int64_t generation = 0;  // configure() calls so far
  Stats stats;
  at::Tensor pool;             // number_checkpoints slots of slot_numel elements
  int64_t slot_numel = 0;
  std::vector<bool> slot_used;
};
State& state() {
  static State s;
  return s;
}

// What one call keeps alive until its backward: the bytes (counted in the statistics) and
// the slot of the contiguous buffer, both given back when the call's saved inputs go.
struct Holding {
  int64_t bytes = 0;
  int slot = -1;
  Holding() = default;
  Holding(const Holding&) = delete;
  Holding& operator=(const Holding&) = delete;
  ~Holding() {
    State& st = state();
    std::lock_guard<std::mutex> lock(st.mu);
    st.stats.saved_bytes -= bytes;
    if (slot >= 0 && size_t(slot) < st.slot_used.size()) st.slot_used[size_t(slot)] = false;
  }
};

// One saved input: the whole tensor, or this rank's equal piece of its flattened values.
struct Saved {
  at::Tensor data;
  std::vector<int64_t> shape;
  int64_t numel = 0;
  bool partitioned = false;
};

bool partitionable(const at::Tensor& x, const PartitionGroup& g) {
  return g.size > 1 && x.defined() && at::isFloatingType(x.scalar_type()) && x.numel() >= g.size;
}

Saved save_one(const at::Tensor& x, const PartitionGroup& g) {
  Saved out;
  if (!partitionable(x, g)) {
    out.data = x.defined() ? x.detach() : x;
    return out;
  }
  out.shape = x.sizes().vec();
  out.numel = x.numel();
  out.partitioned = true;
  const int64_t piece = (out.numel + g.size - 1) / g.size;
  at::Tensor flat = x.detach().reshape({-1});
  const int64_t begin = std::min<int64_t>(int64_t(g.rank) * piece, out.numel);
  const int64_t length = std::min<int64_t>(piece, out.numel - begin);
  at::Tensor mine = at::zeros({piece}, flat.options());
  if (length > 0) mine.narrow(0, 0, length).copy_(flat.narrow(0, begin, length));
  out.data = mine;
  return out;
}

at::Tensor restore_one(const Saved& s, const PartitionGroup& g) {
  if (!s.partitioned) return s.data;
  at::Tensor full = at::empty({s.data.numel() * g.size}, s.data.options());
  g.all_gather(full, s.data.contiguous());
  return full.narrow(0, 0, s.numel).view(s.shape);
}

// Moves the floating saved data of one call into a free slot of the contiguous buffer (the
// buffer is sized by the first call, and grown while no slot is in use).
void place_contiguous(std::vector<Saved>& saved, Holding& holding) {
  int64_t total = 0;
  std::optional<at::ScalarType> dtype;
  for (const Saved& s : saved) {
    if (!s.data.defined() || !at::isFloatingType(s.data.scalar_type())) continue;
    if (dtype && *dtype != s.data.scalar_type()) return;  // mixed dtypes: kept as they are
    dtype = s.data.scalar_type();
    total += s.data.numel();
  }
  if (!dtype || total == 0) return;
  State& st = state();
  at::Tensor slot_view;
  {
    std::lock_guard<std::mutex> lock(st.mu);
    const int64_t n = st.options.number_checkpoints;
    const bool idle = std::none_of(st.slot_used.begin(), st.slot_used.end(), [](bool b) { return b; });
    if (idle && (!st.pool.defined() || st.slot_numel < total || st.pool.scalar_type() != *dtype)) {
      st.slot_numel = total;
      st.pool = at::empty({n * total}, at::TensorOptions().dtype(*dtype));
      st.slot_used.assign(size_t(n), false);
    }
    if (st.slot_numel < total || st.pool.scalar_type() != *dtype) return;  // grown later, when idle
    auto free = std::find(st.slot_used.begin(), st.slot_used.end(), false);
    if (free == st.slot_used.end())
      throw Error(ds::str("activation checkpointing: more than number_checkpoints = ", n,
                          " checkpointed calls hold saved inputs at once; set activation_checkpointing."
                          "number_checkpoints to the checkpointed calls of one forward (times the micro-batches "
                          "a pipeline stage keeps in flight)"));
    *free = true;
    holding.slot = int(free - st.slot_used.begin());
    slot_view = st.pool.narrow(0, int64_t(holding.slot) * st.slot_numel, total);
  }
  int64_t at_ = 0;
  for (Saved& s : saved) {
    if (!s.data.defined() || !at::isFloatingType(s.data.scalar_type())) continue;
    at::Tensor dst = slot_view.narrow(0, at_, s.data.numel()).view(s.data.sizes());
    dst.copy_(s.data);
    s.data = dst;
    at_ += s.data.numel();
  }
}

// The backward of one checkpointed call: recompute fn on the saved inputs with grad mode on,
// then backpropagate the incoming gradient through the recomputed graph (a nested backward,
// which also accumulates the gradients of the parameters fn used).
struct RecomputeBackward : torch::autograd::Node {
  Function fn;
  std::vector<Saved> inputs;  // the gradient flows to those whose flag is set
  std::vector<bool> needs_grad;
  PartitionGroup partition;   // the one the inputs were split across
  bool profile = false;
  std::shared_ptr<Holding> holding;
  at::Tensor rng;  // the generator's state when fn first ran
  std::vector<at::Tensor> streams;  // the registered streams' states then

  std::string name() const override { return "ds::checkpointing::RecomputeBackward"; }

  torch::autograd::variable_list apply(torch::autograd::variable_list&& grads) override {
    if (!fn) throw Error("checkpoint: this checkpointed call was already backpropagated once");
    const auto start = Clock::now();
    std::vector<at::Tensor> xs;
    for (size_t i = 0; i < inputs.size(); ++i) {
      at::Tensor x = restore_one(inputs[i], partition);
      xs.push_back(x.defined() ? x.detach().requires_grad_(needs_grad[i]) : x);
    }
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
    const double recompute_s = since(start);
    const auto backward_start = Clock::now();
    if (out.requires_grad()) torch::autograd::backward({out}, {grads.at(0)});
    torch::autograd::variable_list result;
    for (size_t i = 0; i < xs.size(); ++i) result.push_back(needs_grad[i] ? xs[i].grad() : at::Tensor());
    release_variables();  // the saved inputs (and their slot) go now, not with the graph
    fn = nullptr;
    State& st = state();
    std::lock_guard<std::mutex> lock(st.mu);
    ++st.stats.recomputes;
    if (profile) st.stats.recompute_s += recompute_s, st.stats.backward_s += since(backward_start);
    return result;
  }

  void release_variables() override {
    inputs.clear();
    holding.reset();
    rng = at::Tensor();
    streams.clear();
  }
};

}  // namespace

at::Tensor checkpoint(Function fn, const std::vector<at::Tensor>& inputs) {
  if (!at::GradMode::is_enabled()) return fn(inputs);
  Options options;
  {
    State& st = state();
    std::lock_guard<std::mutex> lock(st.mu);
    options = st.options;
  }
  auto node = std::make_shared<RecomputeBackward>();
  node->rng = nn::cpu_rng_state();
  node->streams = stream_states();
  at::Tensor out;
  const auto start = Clock::now();
  {
    at::NoGradGuard no_grad;
    out = fn(inputs);
  }
  const double forward_s = since(start);
  if (!out.defined() || !at::isFloatingType(out.scalar_type())) return out;  // nothing to differentiate
  if (out.is_view()) out = out.clone();  // autograd history cannot be set on a view
  node->holding = std::make_shared<Holding>();
  for (const at::Tensor& x : inputs) {
    node->inputs.push_back(save_one(x, options.partition));
    node->needs_grad.push_back(x.defined() && x.requires_grad());
  }
  if (options.contiguous) place_contiguous(node->inputs, *node->holding);
  for (const Saved& sv : node->inputs)
    if (sv.data.defined()) node->holding->bytes += int64_t(sv.data.nbytes());
  node->partition = options.partition;
  node->profile = options.profile;
  node->fn = std::move(fn);
  node->set_next_edges(torch::autograd::collect_next_edges(inputs));
  torch::autograd::set_history(out, node);
  State& st = state();
  std::lock_guard<std::mutex> lock(st.mu);
  ++st.stats.calls;
  if (options.profile) st.stats.forward_s += forward_s;
  st.stats.saved_bytes += node->holding->bytes;
  st.stats.peak_saved_bytes = std::max(st.stats.peak_saved_bytes, st.stats.saved_bytes);
  return out;
}

int64_t configure(const Options& options) {
  if (options.contiguous && options.number_checkpoints < 1)
    throw ConfigError("activation_checkpointing.contiguous_memory_optimization needs number_checkpoints (the "
                      "checkpointed calls of one forward): the contiguous buffer holds that many saved inputs");
  if (options.partition.size > 1 && !options.partition.all_gather)
    throw Error("checkpointing::configure: a partition group of more than one rank needs its all_gather");
  State& st = state();
  std::lock_guard<std::mutex> lock(st.mu);
  st.options = options;
  if (std::none_of(st.slot_used.begin(), st.slot_used.end(), [](bool b) { return b; })) {
    st.pool = at::Tensor();  // sized again by the next call
    st.slot_numel = 0;
    st.slot_used.clear();
  }
  return ++st.generation;
}

void unconfigure(int64_t token) {
  {
    State& st = state();
    std::lock_guard<std::mutex> lock(st.mu);
    if (st.generation != token) return;
  }
  configure({});
}

Stats stats() {
  State& st = state();
  std::lock_guard<std::mutex> lock(st.mu);
  return st.stats;
}

void reset_stats() {
  State& st = state();
  std::lock_guard<std::mutex> lock(st.mu);
  const int64_t alive = st.stats.saved_bytes;
  st.stats = Stats{};
  st.stats.saved_bytes = st.stats.peak_saved_bytes = alive;
}

std::string Stats::describe() const {
  char buf[256];
  std::snprintf(buf, sizeof buf, "%lld calls, %lld recomputed | forward %.1f ms, recompute %.1f ms, backward %.1f ms",
                static_cast<long long>(calls), static_cast<long long>(recomputes), forward_s * 1e3, recompute_s * 1e3,
                backward_s * 1e3);
  return ds::str("activation checkpointing: ", buf, " | saved inputs peak ", format_bytes(double(peak_saved_bytes)));
}

int64_t recomputations() { return recomputed.load(); }

void register_rng_stream(std::function<at::Tensor()> get, std::function<void(const at::Tensor&)> set) {
  std::lock_guard<std::mutex> lock(streams_mu);
  streams.push_back({std::move(get), std::move(set)});
}

}  // namespace ds::checkpointing
