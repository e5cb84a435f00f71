#include "ds/zero/grad_sync.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>

#include <chrono>
#include <mutex>

#include "ds/common/error.h"

namespace ds::zero {

// The hooks outlive the reducer if the model does; they reach it only through this.
struct GradReducer::Shared {
  std::mutex mu;
  GradReducer* owner = nullptr;
};

namespace {

class ReadyHook final : public torch::autograd::FunctionPostHook {
 public:
  ReadyHook(std::weak_ptr<void> shared, std::function<void()> fire) : shared_(std::move(shared)), fire_(std::move(fire)) {}
  torch::autograd::variable_list operator()(const torch::autograd::variable_list& outputs,
                                            const torch::autograd::variable_list&) override {
    if (auto alive = shared_.lock()) fire_();
    return outputs;
  }

 private:
  std::weak_ptr<void> shared_;
  std::function<void()> fire_;
};

}  // namespace

GradReducer::GradReducer(std::vector<FlatUnit*> units, std::shared_ptr<comm::Communicator> comm,
                         GradReducerOptions options, std::vector<at::Tensor> shards)
    : units_(std::move(units)), comm_(std::move(comm)), options_(options), shards_(std::move(shards)),
      shared_(std::make_shared<Shared>()) {
  if (options_.bucket_elements < 1) throw ConfigError(ds::str("reduce_bucket_size must be >= 1, got ", options_.bucket_elements));
  if (!shards_.empty()) {
    DS_CHECK(shards_.size() == units_.size(), "reduce-scatter needs one shard per unit");
    for (size_t u = 0; u < units_.size(); ++u)
      DS_CHECK(shards_[u].numel() == comm::chunk_of(units_[u]->padded_numel(), comm_->size(), comm_->rank()).length,
               "shard of unit ", units_[u]->name(), " has the wrong size");
  }
  shared_->owner = this;
  ready_count_.assign(units_.size(), 0);
  launched_.assign(units_.size(), false);
  for (size_t u = 0; u < units_.size(); ++u) {
    for (const at::Tensor& p : units_[u]->tensors()) {
      auto acc = torch::autograd::impl::grad_accumulator(p);
      std::weak_ptr<Shared> weak = shared_;
      acc->add_post_hook(std::make_unique<ReadyHook>(std::weak_ptr<void>(shared_), [weak, u] {
        if (auto s = weak.lock()) {
          std::lock_guard<std::mutex> lock(s->mu);
          if (s->owner) s->owner->on_param_ready(u);
        }
      }));
      accumulators_.push_back(acc);  // the parameter holds its accumulator only weakly
    }
  }
}

GradReducer::~GradReducer() {
  {
    std::lock_guard<std::mutex> lock(shared_->mu);
    shared_->owner = nullptr;
  }
  for (auto& b : in_flight_) {
    try {
      b.work.wait();
      if (b.quantized.active()) b.quantized.wait();
    } catch (...) {
    }
  }
}

void GradReducer::begin_backward(bool boundary, GradSync sync) {
  if (sync == GradSync::kReduceScatter && shards_.empty())
    throw Error("gradient sync by reduce-scatter needs gradient shards (ZeRO stages 1-3)");
  if (sync != GradSync::kReduceScatter)
    for (FlatUnit* u : units_)
      if (!u->persistent_grads())
        throw Error(ds::str("gradient sync '", to_string(sync), "' needs persistent full gradients (ZeRO stages 0-1); "
                            "unit ", u->name(), " has none"));
  boundary_ = boundary;
  sync_ = sync;
  std::fill(ready_count_.begin(), ready_count_.end(), 0);
}

void GradReducer::on_param_ready(size_t u) {
  if (++ready_count_[u] == static_cast<int>(units_[u]->tensors().size()) && reduces_this_micro_batch() && options_.overlap &&
      !launched_[u])
    launch(u);
}

void GradReducer::launch(size_t u) {
  launched_[u] = true;
  FlatUnit& unit = *units_[u];
  const at::ScalarType dtype = options_.comm_dtype;
  if (sync_ == GradSync::kReduceScatter) {
    Bucket b;
    b.unit = u;
    b.wire = unit.pack_grads(dtype);  // a copy (persistent grads) or the released grads
    if (options_.predivide_factor != 1.0) b.wire.div_(options_.predivide_factor);
    b.elements = b.wire.numel();
    if (options_.quantize_group > 0 && comm_->size() > 1) {
      b.quantized = compress::QuantizedReduceScatter(*comm_, b.wire, options_.quantize_group);
      b.wire = at::Tensor();  // quantized: the gradients are no longer needed
    } else {
      b.wire_out = at::empty({shards_[u].numel()}, b.wire.options());
      if (comm_->size() == 1) b.wire_out.copy_(b.wire);
      else b.work = comm_->reduce_scatter(b.wire_out, b.wire, comm::ReduceOp::Sum);
    }
    wire_elements_ += b.elements;
    in_flight_.push_back(std::move(b));
    if (options_.on_packed) options_.on_packed(u);
    // reduce_bucket_size bounds what waits on the wire: older units are settled first.
    while (settled_ + 1 < in_flight_.size() && wire_elements_ > options_.bucket_elements) settle(in_flight_[settled_++]);
    return;
  }
  if (comm_->size() == 1) return;
  const at::Tensor& flat = unit.grads();
  const int64_t n = flat.numel();
  for (int64_t s = 0; s < n; s += options_.bucket_elements) {
    Bucket b;
    b.unit = u;
    b.grad_slice = flat.slice(0, s, std::min(n, s + options_.bucket_elements));
    if (options_.predivide_factor != 1.0) b.grad_slice.div_(options_.predivide_factor);
    b.wire = b.grad_slice.scalar_type() == dtype ? b.grad_slice : b.grad_slice.to(dtype);
    b.work = comm_->all_reduce(b.wire, comm::ReduceOp::Sum);
    in_flight_.push_back(std::move(b));
  }
}

// Waits for one bucket and puts its result in place; its buffers are freed.
void GradReducer::settle(Bucket& b) {
  const double post = options_.predivide_factor / comm_->size();
  const auto start = std::chrono::steady_clock::now();
  b.work.wait();
  if (!b.quantized.active()) wait_s_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (b.quantized.active()) {  // qgZ: the owner sums the dequantized contributions in fp32
    at::Tensor& shard = shards_[b.unit];
    if (shard.scalar_type() == at::kFloat) {
      b.quantized.finish(shard, float(post));
    } else {
      at::Tensor sum = at::zeros({shard.numel()}, at::TensorOptions().dtype(at::kFloat));
      b.quantized.finish(sum, float(post));
      shard.add_(sum);
    }
    wait_s_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();  // the exchange's wait too
    wire_elements_ -= b.elements;
  } else if (b.wire_out.defined()) {  // reduce-scatter: accumulate this rank's chunk (scaled in fp32)
    shards_[b.unit].add_(b.wire_out, post);
    wire_elements_ -= b.elements;
  } else {
    if (b.wire.data_ptr() != b.grad_slice.data_ptr()) b.grad_slice.copy_(b.wire);
    if (post != 1.0) b.grad_slice.mul_(post);
  }
  b.wire = b.wire_out = b.grad_slice = at::Tensor();
}

void GradReducer::finish() {
  if (reduces_this_micro_batch())
    for (size_t u = 0; u < units_.size(); ++u)
      if (!launched_[u]) launch(u);
  for (size_t i = settled_; i < in_flight_.size(); ++i) settle(in_flight_[i]);
  in_flight_.clear();
  settled_ = 0;
  wire_elements_ = 0;
  std::fill(launched_.begin(), launched_.end(), false);
}

}  // namespace ds::zero
