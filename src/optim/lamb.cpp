// Lamb, with DeepSpeed FusedLamb's arithmetic (You et al., "Large Batch Optimization for Deep
// Learning"). Per parameter tensor:
//
//   m = b1 m + (1 - b1) g            v = b2 v + (1 - b2) g²
//   u = m / (sqrt(v) + eps) + wd w   (eps_inside_sqrt: m / sqrt(v + eps) + wd w)
//   r = ||w|| / ||u|| clamped to [min_coeff, max_coeff]   (1 when either norm is 0)
//   w -= lr_t r u,   lr_t = lr sqrt(1 - b2^t) / (1 - b1^t)   (bias_correction; else lr)
//
// The trust ratio r belongs to each parameter tensor, so the step needs every tensor's ||w||
// and ||u|| before any weight moves: a first pass over this rank's segments updates m and v
// and sums w² and u² per tensor (ZeRO 1-3 split a tensor over ranks: the sums are all-reduced
// over the data group; tensor parallelism splits some tensors over the tensor group: their
// sums are added over it), a second recomputes u and moves the weights. r does not depend on
// the ZeRO stage, the number of ranks or the tensor size (up to the rounding of the partial
// sums); DeepSpeed's ZeRO computes it per rank's flat partition instead, which changes with
// the world size. Each pass is one fused loop
// (lamb_kernels.cpp) over chunks of the tensors, spread over a thread pool; the sums are
// added chunk by chunk in a fixed order, so a step does not depend on thread timing.
#include "lamb.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "ds/common/error.h"
#include "ds/ops/thread_pool.h"
#include "ds/zero/flat_unit.h"
#include "lamb_kernels.h"

namespace ds::optim {

namespace {

class Lamb final : public FlatOptimizer {
 public:
  Lamb(OptimizerConfig c, std::function<void(const std::vector<double>&)> on_ratios)
      : FlatOptimizer(std::move(c)), on_ratios_(std::move(on_ratios)), pool_(std::max(1, at::get_num_threads())) {
    h_.b2 = float(config_.betas[1]), h_.eps = float(config_.eps), h_.weight_decay = float(config_.weight_decay);
    h_.eps_inside_sqrt = config_.eps_inside_sqrt;
  }
  std::string name() const override { return "Lamb"; }
  int passes() const override { return 2; }
  std::vector<StateSpec> state_specs() const override { return {{"exp_avg"}, {"exp_avg_sq"}}; }
  std::vector<at::Tensor> init_state(int64_t n) const override { return {at::zeros({n}), at::zeros({n})}; }

  // A master on its own is one tensor (what FusedLamb does with a flat parameter).
  void step(at::Tensor& master, const at::Tensor& grad, std::vector<at::Tensor>& state, const StepArgs& args,
            const WorkingCopy* copy) override {
    check(master, grad, state);
    const at::Tensor g = as_float(grad);
    std::vector<TensorPiece> pieces;
    append_pieces(0, 0, master.numel(), pieces);
    double w2 = 0, u2 = 0;
    moments(master, g, state, args, pieces, &w2, &u2);
    apply(master, state, pieces, {step_size(args) * ratio(w2, u2)});
    write_copy(master, copy);
  }

  void step_all(StepContext& ctx) override {
    const TensorIndex index(ctx);
    at::Tensor sums = at::zeros({2, int64_t(index.count())}, at::kDouble);  // w², u² per tensor
    double* w2 = sums.data_ptr<double>();
    double* u2 = w2 + index.count();
    ctx.for_each_segment([&](Segment& s) {
      check(s.master, s.grad, *s.states);
      moments(s.master, as_float(s.grad), *s.states, ctx.args, tensor_pieces(ctx, s, index), w2, u2);
    });
    if (ctx.partitioned && ctx.data_group && ctx.data_group->size() > 1)
      ctx.data_group->all_reduce(sums, comm::ReduceOp::Sum).wait();
    reduce_over_tensor_group(ctx, index, sums, comm::ReduceOp::Sum);
    std::vector<double> ratios(index.count()), scale(index.count());
    const double lr_t = step_size(ctx.args);
    for (size_t t = 0; t < scale.size(); ++t) ratios[t] = ratio(w2[t], u2[t]), scale[t] = lr_t * ratios[t];
    ctx.for_each_segment([&](Segment& s) {
      apply(s.master, *s.states, tensor_pieces(ctx, s, index), scale);
      write_copy(s.master, s.copy);
    });
    if (on_ratios_) on_ratios_(ratios);
  }

 private:
  static at::Tensor as_float(const at::Tensor& g) {
    return (g.scalar_type() == at::kFloat ? g : g.to(at::kFloat)).contiguous();
  }

  void check(const at::Tensor& master, const at::Tensor& grad, const std::vector<at::Tensor>& state) const {
    if (master.scalar_type() != at::kFloat || !at::isFloatingType(grad.scalar_type()))
      throw Error(ds::str("Lamb: expects float32 master parameters and floating-point gradients, got ",
                          master.scalar_type(), " and ", grad.scalar_type()));
    // At least m and v (1-bit Lamb keeps a third state after them).
    if (grad.numel() != master.numel() || state.size() < 2 || state[0].numel() != master.numel() ||
        state[1].numel() != master.numel())
      throw Error(ds::str("Lamb: a master of ", master.numel(), " elements needs a gradient and 2 states of as many"));
    if (!master.is_contiguous() || !state[0].is_contiguous() || !state[1].is_contiguous())
      throw Error("Lamb: the master and its states must be contiguous");
  }

  // Pass 1 over the pieces: m and v updated, w² and u² added to w2[piece.tensor], u2[...].
  void moments(const at::Tensor& w, const at::Tensor& g, std::vector<at::Tensor>& st, const StepArgs& args,
               const std::vector<TensorPiece>& pieces, double* w2, double* u2) {
    detail::LambHyper h = h_;
    h.b1 = float(args.beta1.value_or(config_.betas[0]));
    const float* pw = w.data_ptr<float>();
    const float* pg = g.data_ptr<float>();
    float* pm = st[0].data_ptr<float>();
    float* pv = st[1].data_ptr<float>();
    std::vector<std::pair<double, double>> part(pieces.size(), {0.0, 0.0});
    pool_.run(int64_t(pieces.size()), [&](int64_t i, int) {
      const TensorPiece& p = pieces[size_t(i)];
      detail::lamb_moments(pw + p.begin, pg + p.begin, pm + p.begin, pv + p.begin, p.end - p.begin, h,
                           part[size_t(i)].first, part[size_t(i)].second);
    });
    for (size_t i = 0; i < pieces.size(); ++i) w2[pieces[i].tensor] += part[i].first, u2[pieces[i].tensor] += part[i].second;
  }

  // Pass 2: w -= scale[piece.tensor] u.
  void apply(at::Tensor& w, const std::vector<at::Tensor>& st, const std::vector<TensorPiece>& pieces,
             const std::vector<double>& scale) {
    float* pw = w.data_ptr<float>();
    const float* pm = st[0].data_ptr<float>();
    const float* pv = st[1].data_ptr<float>();
    pool_.run(int64_t(pieces.size()), [&](int64_t i, int) {
      const TensorPiece& p = pieces[size_t(i)];
      detail::lamb_apply(pw + p.begin, pm + p.begin, pv + p.begin, p.end - p.begin, h_, float(scale[p.tensor]));
    });
  }

  double step_size(const StepArgs& args) const {
    if (!config_.bias_correction) return args.lr;
    const double b1 = args.beta1.value_or(config_.betas[0]), b2 = config_.betas[1], t = double(args.step);
    return args.lr * std::sqrt(1.0 - std::pow(b2, t)) / (1.0 - std::pow(b1, t));
  }

  double ratio(double w2, double u2) const {
    if (w2 == 0.0 || u2 == 0.0) return 1.0;
    return std::clamp(std::sqrt(w2) / std::sqrt(u2), config_.min_coeff, config_.max_coeff);
  }

  detail::LambHyper h_;
  std::function<void(const std::vector<double>&)> on_ratios_;
  ops::ThreadPool pool_;
};

}  // namespace

TensorIndex::TensorIndex(const StepContext& ctx) : first(ctx.unit_tensors.size() + 1, 0) {
  for (size_t k = 0; k < ctx.unit_tensors.size(); ++k) first[k + 1] = first[k] + ctx.unit_tensors[k]->size();
}

void append_pieces(size_t tensor, int64_t begin, int64_t end, std::vector<TensorPiece>& out) {
  for (int64_t b = begin; b < end; b += kPieceElements) out.push_back({tensor, b, std::min(end, b + kPieceElements)});
}

std::vector<TensorPiece> tensor_pieces(const StepContext& ctx, const Segment& s, const TensorIndex& index) {
  if (s.unit >= ctx.unit_tensors.size())
    throw Error(ds::str("segment of unit ", s.unit, " but the step knows ", ctx.unit_tensors.size(), " units"));
  const std::vector<zero::ParamSlot>& slots = *ctx.unit_tensors[s.unit];
  const int64_t lo = s.unit_offset, hi = s.unit_offset + s.master.numel();
  std::vector<TensorPiece> out;
  for (size_t t = 0; t < slots.size(); ++t) {
    const int64_t b = std::max(lo, slots[t].offset), e = std::min(hi, slots[t].offset + slots[t].numel);
    append_pieces(index.first[s.unit] + t, b - lo, e - lo, out);
  }
  return out;
}

void reduce_over_tensor_group(const StepContext& ctx, const TensorIndex& index, at::Tensor& values,
                              comm::ReduceOp op) {
  if (!ctx.tensor_group || ctx.tensor_group->size() == 1) return;
  if (!ctx.tensor_split || ctx.tensor_split->size() != ctx.unit_tensors.size())
    throw Error("the optimizer step has a tensor group but not which tensors are split over it");
  std::vector<int64_t> split;
  for (size_t k = 0; k < ctx.unit_tensors.size(); ++k) {
    const std::vector<bool>& flags = (*ctx.tensor_split)[k];
    if (flags.size() != ctx.unit_tensors[k]->size())
      throw Error(ds::str("unit ", k, " has ", ctx.unit_tensors[k]->size(), " tensors but ", flags.size(),
                          " split flags"));
    for (size_t t = 0; t < flags.size(); ++t)
      if (flags[t]) split.push_back(int64_t(index.first[k] + t));
  }
  if (split.empty()) return;
  const at::Tensor columns = at::tensor(split, at::kLong);
  at::Tensor part = values.index_select(-1, columns);
  ctx.tensor_group->all_reduce(part, op).wait();
  values.index_copy_(-1, columns, part);
}

std::unique_ptr<FlatOptimizer> make_lamb(const OptimizerConfig& config,
                                         std::function<void(const std::vector<double>&)> on_ratios) {
  if (config.eps <= 0) throw ConfigError(ds::str("optimizer.params.eps: Lamb needs eps > 0, got ", config.eps));
  if (config.min_coeff < 0 || config.max_coeff < config.min_coeff)
    throw ConfigError(ds::str("optimizer.params: Lamb needs 0 <= min_coeff <= max_coeff, got ", config.min_coeff, " and ",
                              config.max_coeff));
  return std::make_unique<Lamb>(config, std::move(on_ratios));
}

}  // namespace ds::optim
