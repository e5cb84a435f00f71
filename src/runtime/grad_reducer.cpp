#include "ds/runtime/grad_reducer.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>

#include <chrono>
#include <mutex>

#include "ds/common/error.h"

namespace ds {

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
                         GradReducerOptions options)
    : units_(std::move(units)), comm_(std::move(comm)), options_(options), shared_(std::make_shared<Shared>()) {
  if (options_.bucket_elements < 1) throw ConfigError(ds::str("reduce_bucket_size must be >= 1, got ", options_.bucket_elements));
  shared_->owner = this;
  ready_count_.assign(units_.size(), 0);
  launched_.assign(units_.size(), false);
  buckets_.resize(units_.size());
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
  for (auto& unit : buckets_)
    for (auto& b : unit) {
      try {
        b.work.wait();
      } catch (...) {
      }
    }
}

void GradReducer::begin_backward(bool boundary) {
  boundary_ = boundary;
  std::fill(ready_count_.begin(), ready_count_.end(), 0);
}

void GradReducer::on_param_ready(size_t u) {
  if (++ready_count_[u] == static_cast<int>(units_[u]->tensors().size()) && boundary_ && options_.overlap && !launched_[u])
    launch(u);
}

void GradReducer::launch(size_t u) {
  launched_[u] = true;
  if (comm_->size() == 1) return;
  const at::Tensor& flat = units_[u]->grads();
  const int64_t n = flat.numel();
  for (int64_t b = 0; b < n; b += options_.bucket_elements) {
    Bucket bucket;
    bucket.grad_slice = flat.slice(0, b, std::min(n, b + options_.bucket_elements));
    if (options_.predivide_factor != 1.0) bucket.grad_slice.div_(options_.predivide_factor);
    bucket.wire = options_.comm_dtype == at::kFloat ? bucket.grad_slice : bucket.grad_slice.to(options_.comm_dtype);
    bucket.work = comm_->all_reduce(bucket.wire, comm::ReduceOp::Sum);
    buckets_[u].push_back(std::move(bucket));
  }
}

void GradReducer::finish() {
  auto start = std::chrono::steady_clock::now();
  for (size_t u = 0; u < units_.size(); ++u)
    if (!launched_[u]) launch(u);
  const double post = options_.predivide_factor / comm_->size();
  for (size_t u = 0; u < units_.size(); ++u) {
    for (Bucket& b : buckets_[u]) {
      b.work.wait();
      if (b.wire.data_ptr() != b.grad_slice.data_ptr()) b.grad_slice.copy_(b.wire);
      if (post != 1.0) b.grad_slice.mul_(post);
    }
    buckets_[u].clear();
    launched_[u] = false;
  }
  last_wait_seconds_ = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace ds
