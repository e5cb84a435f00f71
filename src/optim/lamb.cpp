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
// over the data group), a second recomputes u and moves the weights. r does not depend on
// the ZeRO stage or the number of ranks (DeepSpeed's ZeRO computes it per rank's flat
// partition instead, which changes with the world size).
#include "lamb.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "ds/common/error.h"
#include "ds/zero/flat_unit.h"

namespace ds::optim {

namespace {

class Lamb final : public FlatOptimizer {
 public:
  explicit Lamb(OptimizerConfig c) : FlatOptimizer(std::move(c)) {}
  std::string name() const override { return "Lamb"; }
  std::vector<StateSpec> state_specs() const override { return {{"exp_avg"}, {"exp_avg_sq"}}; }
  std::vector<at::Tensor> init_state(int64_t n) const override { return {at::zeros({n}), at::zeros({n})}; }

  // A master on its own is one tensor (what FusedLamb does with a flat parameter).
  void step(at::Tensor& master, const at::Tensor& grad, std::vector<at::Tensor>& state, const StepArgs& args,
            const WorkingCopy* copy) override {
    check(master, grad, state);
    const at::Tensor u = moments_and_update(master, as_float(grad), state, args);
    const double w2 = sq_norm(master), u2 = sq_norm(u);
    master.sub_(u, step_size(args) * ratio(w2, u2));
    write_copy(master, copy);
  }

  void step_all(StepContext& ctx) override {
    // Tensor t of unit k is entry first[k] + t of the sums, the same on every rank.
    std::vector<size_t> first(ctx.unit_tensors.size() + 1, 0);
    for (size_t k = 0; k < ctx.unit_tensors.size(); ++k) first[k + 1] = first[k] + ctx.unit_tensors[k]->size();
    at::Tensor sums = at::zeros({2, int64_t(first.back())}, at::kDouble);  // w², u² per tensor
    double* w2 = sums.data_ptr<double>();
    double* u2 = w2 + first.back();
    ctx.for_each_segment([&](Segment& s) {
      check(s.master, s.grad, *s.states);
      const at::Tensor u = moments_and_update(s.master, as_float(s.grad), *s.states, ctx.args);
      for_each_piece(ctx, s, first, [&](size_t t, int64_t b, int64_t e) {
        w2[t] += sq_norm(s.master.slice(0, b, e));
        u2[t] += sq_norm(u.slice(0, b, e));
      });
    });
    if (ctx.partitioned && ctx.data_group && ctx.data_group->size() > 1)
      ctx.data_group->all_reduce(sums, comm::ReduceOp::Sum).wait();
    const double lr_t = step_size(ctx.args);
    ctx.for_each_segment([&](Segment& s) {
      const at::Tensor u = update(s.master, (*s.states)[0], (*s.states)[1]);  // m and v as the first pass left them
      for_each_piece(ctx, s, first, [&](size_t t, int64_t b, int64_t e) {
        s.master.slice(0, b, e).sub_(u.slice(0, b, e), lr_t * ratio(w2[t], u2[t]));
      });
      write_copy(s.master, s.copy);
    });
  }

 private:
  static at::Tensor as_float(const at::Tensor& g) { return g.scalar_type() == at::kFloat ? g : g.to(at::kFloat); }
  static double sq_norm(const at::Tensor& x) {
    const double n = x.numel() ? x.norm().item<double>() : 0.0;
    return n * n;
  }

  void check(const at::Tensor& master, const at::Tensor& grad, const std::vector<at::Tensor>& state) const {
    if (master.scalar_type() != at::kFloat || !at::isFloatingType(grad.scalar_type()))
      throw Error(ds::str("Lamb: expects float32 master parameters and floating-point gradients, got ",
                          master.scalar_type(), " and ", grad.scalar_type()));
    if (grad.numel() != master.numel() || state.size() != 2 || state[0].numel() != master.numel() ||
        state[1].numel() != master.numel())
      throw Error(ds::str("Lamb: a master of ", master.numel(), " elements needs a gradient and 2 states of as many"));
  }

  // m and v in place; returns u.
  at::Tensor moments_and_update(const at::Tensor& w, const at::Tensor& g, std::vector<at::Tensor>& st,
                                const StepArgs& args) const {
    const double b1 = args.beta1.value_or(config_.betas[0]), b2 = config_.betas[1];
    st[0].mul_(b1).add_(g, 1.0 - b1);
    st[1].mul_(b2).addcmul_(g, g, 1.0 - b2);
    return update(w, st[0], st[1]);
  }

  at::Tensor update(const at::Tensor& w, const at::Tensor& m, const at::Tensor& v) const {
    at::Tensor denom = config_.eps_inside_sqrt ? (v + config_.eps).sqrt_() : v.sqrt().add_(config_.eps);
    at::Tensor u = m / denom;
    if (config_.weight_decay != 0.0) u.add_(w, config_.weight_decay);
    return u;
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

  // fn(tensor index, begin, end) for each parameter tensor overlapping segment s, with [begin,
  // end) in the segment's own element numbering. The padding after the last tensor is no
  // tensor's and keeps its zeros.
  template <typename Fn>
  static void for_each_piece(const StepContext& ctx, const Segment& s, const std::vector<size_t>& first, Fn fn) {
    if (s.unit >= ctx.unit_tensors.size())
      throw Error(ds::str("Lamb: segment of unit ", s.unit, " but the step knows ", ctx.unit_tensors.size(), " units"));
    const std::vector<zero::ParamSlot>& slots = *ctx.unit_tensors[s.unit];
    const int64_t lo = s.unit_offset, hi = s.unit_offset + s.master.numel();
    for (size_t t = 0; t < slots.size(); ++t) {
      const int64_t b = std::max(lo, slots[t].offset), e = std::min(hi, slots[t].offset + slots[t].numel);
      if (b < e) fn(first[s.unit] + t, b - lo, e - lo);
    }
  }
};

}  // namespace

std::unique_ptr<FlatOptimizer> make_lamb(const OptimizerConfig& config) {
  if (config.min_coeff < 0 || config.max_coeff < config.min_coeff)
    throw ConfigError(ds::str("optimizer.params: Lamb needs 0 <= min_coeff <= max_coeff, got ", config.min_coeff, " and ",
                              config.max_coeff));
  return std::make_unique<Lamb>(config);
}

}  // namespace ds::optim
