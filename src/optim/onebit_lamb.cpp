// 1-bit Lamb (Li et al., 2021, "1-bit LAMB"; DeepSpeed's OnebitLamb) over the engine's flat
// masters, at ZeRO stages 0-2, with DeepSpeed's arithmetic per parameter tensor.
//
// Warm-up, optimizer steps 1..freeze_step: Lamb's own step (lamb.cpp, no bias correction, as
// OnebitLamb) on the gradients the ZeRO stage averaged. Each tensor's trust ratio r, when it
// is not exactly 1, feeds a running average c = coeff_beta c + (1 - coeff_beta) r (from 0).
// At freeze_step the variance v is copied into a fresh one, v'.
//
// Compressed phase, from step freeze_step + 1: the engine averages no gradient. At its first
// step each tensor gets a scale s = mean over tensors of rms(m) / its own rms(m), so that every
// tensor's momentum has the same magnitude when it is compressed. Then per step and unit:
//   m_last = m;  m = b1 m + (1 - b1) g_local;  m = compressed mean of (m s) over the ranks / s
//   (elements whose frozen v is 0 keep m = 0)
// and per tensor, with v frozen:
//   g~ = (m - b1 m_last) / (1 - b1);   v' = b2 v' + (1 - b2) g~²   (the fresh variance)
//   p = m / (sqrt(v) + eps);   u = p + wd w
//   f = max over the tensor of (sqrt(v) + eps) / (sqrt(v') + eps);
//   with wd > 0: q = min(1, ||p|| / ||u||), f = f q + 1 - q
//   f clamped to [factor_min, factor_max], then to the previous step's f (from 1) x (1 +- factor_threshold)
//   w -= lr c f u
// Norms and maxima are of whole tensors: over the data group when ZeRO splits a tensor, and
// over the tensor group for a tensor split by tensor parallelism (as Lamb's).
//
// States: exp_avg, exp_avg_sq and exp_avg_sq_fresh are elementwise (sharded, saved, reshaped);
// the error feedback is per rank (as 1-bit Adam's); c, the last f and s are per tensor, saved
// by name with the model states (tensor_states()), so they survive any change of layout.
#include "onebit_lamb.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <map>

#include "compressed_units.h"
#include "ds/common/error.h"
#include "ds/common/strings.h"
#include "ds/ops/thread_pool.h"
#include "ds/zero/flat_unit.h"
#include "lamb.h"
#include "lamb_kernels.h"

namespace ds::optim {

namespace {

using NamedTensors = std::vector<std::pair<std::string, at::Tensor>>;

// One parameter tensor's scalars.
struct TensorScalars {
  double coeff = 0.0;   // the trust ratio's running average (DeepSpeed: lamb_coeff_freeze)
  double factor = 1.0;  // the last compressed step's factor (last_factor)
  double scale = 0.0;   // the momentum's scale for compression (scaling_coeff); 0: not yet set
};

class OneBitLamb final : public CompressedMomentum {
 public:
  explicit OneBitLamb(OptimizerConfig c)
      : CompressedMomentum(c, "1-bit Lamb"),
        lamb_(make_lamb(warmup_config(c), [this](const std::vector<double>& r) { ratios_ = r; })),
        pool_(std::max(1, at::get_num_threads())) {}

  std::string name() const override { return ds::str("OneBitLamb (freeze_step ", config_.freeze_step, ")"); }
  std::vector<StateSpec> state_specs() const override { return {{"exp_avg"}, {"exp_avg_sq"}, {"exp_avg_sq_fresh"}}; }
  std::vector<at::Tensor> init_state(int64_t n) const override { return {at::zeros({n}), at::zeros({n}), at::zeros({n})}; }
  int passes() const override { return 2; }
  // A master on its own: a warm-up Lamb step, one tensor.
  void step(at::Tensor& master, const at::Tensor& grad, std::vector<at::Tensor>& state, const StepArgs& args,
            const WorkingCopy* copy) override {
    lamb_->step(master, grad, state, args, copy);
  }

  void step_all(StepContext& ctx) override {
    const TensorIndex index(ctx);
    bind(ctx, index);
    if (!compressed(ctx.args.step)) return warmup_step(ctx);
    check_own_gradients(ctx);
    compressed_step(ctx, index);
  }

  NamedTensors tensor_states() const override {
    NamedTensors out;
    if (names_.empty()) {  // no step since a load: what was loaded
      for (const auto& [name, s] : loaded_) out.emplace_back(name, as_tensor(s));
      return out;
    }
    for (size_t t = 0; t < names_.size(); ++t) out.emplace_back(names_[t], as_tensor(scalars_[t]));
    return out;
  }
  void check_tensor_states(const NamedTensors& states) const override {
    for (const auto& [name, t] : states) parse(name, t);
  }
  void load_tensor_states(const NamedTensors& states) override {
    loaded_.clear();
    for (const auto& [name, t] : states) loaded_[name] = parse(name, t);
    names_.clear(), scalars_.clear();  // bound again, from loaded_, at the next step
    after_load_ = true, scales_checked_ = false;
  }

 private:
  static OptimizerConfig warmup_config(OptimizerConfig c) {
    c.type = OptimizerType::kLamb;
    c.eps_inside_sqrt = false;  // OnebitLamb adds eps outside the square root
    return c;
  }
  static at::Tensor as_tensor(const TensorScalars& s) { return at::tensor({s.coeff, s.factor, s.scale}, at::kDouble); }
  static TensorScalars parse(const std::string& name, const at::Tensor& t) {
    if (t.numel() != 3 || !at::isFloatingType(t.scalar_type()))
      throw Error(ds::str("the checkpoint's 1-bit Lamb state of ", name, " has shape ", t.sizes(), " and type ",
                          t.scalar_type(), "; expected 3 floating-point values (coeff, factor, scale)"));
    const at::Tensor v = t.to(at::kDouble).reshape({3});
    const TensorScalars s{v[0].item<double>(), v[1].item<double>(), v[2].item<double>()};
    if (!std::isfinite(s.coeff) || !std::isfinite(s.factor) || !std::isfinite(s.scale) || s.coeff < 0 ||
        s.factor <= 0 || s.scale < 0)
      throw Error(ds::str("the checkpoint's 1-bit Lamb state of ", name, " is (coeff ", s.coeff, ", factor ", s.factor,
                          ", scale ", s.scale, "); expected finite values, coeff and scale >= 0 and factor > 0: the "
                          "checkpoint is corrupt"));
    return s;
  }

  // Names the step's tensors (the same every step) and gives each its scalars: loaded ones
  // when a checkpoint had them, else fresh. After a load, a tensor without them is an error in
  // the compressed phase: its frozen trust ratio would be 0 and it would never move again.
  void bind(const StepContext& ctx, const TensorIndex& index) {
    if (names_.size() == index.count() && !names_.empty()) return;
    names_.clear();
    for (const auto* slots : ctx.unit_tensors)
      for (const auto& slot : *slots) names_.push_back(slot.name);
    scalars_.assign(names_.size(), TensorScalars{});
    for (size_t t = 0; t < names_.size(); ++t) {
      auto it = loaded_.find(names_[t]);
      if (it != loaded_.end()) scalars_[t] = it->second;
      else if (after_load_ && compressed(ctx.args.step))
        throw Error(ds::str("1-bit Lamb step ", ctx.args.step, ": the loaded checkpoint has no per-tensor state of ",
                            names_[t], " (its frozen trust ratio), which the compressed phase needs; load a checkpoint "
                            "of this model saved by OneBitLamb"));
    }
    loaded_.clear();
    after_load_ = false;
  }

  void warmup_step(StepContext& ctx) {
    ratios_.clear();
    lamb_->step_all(ctx);
    if (ratios_.size() != scalars_.size())
      throw Error(ds::str("1-bit Lamb: the warm-up step gave ", ratios_.size(), " trust ratios for ", scalars_.size(),
                          " tensors"));
    const double beta = config_.coeff_beta;
    for (size_t t = 0; t < scalars_.size(); ++t)
      if (ratios_[t] != 1.0) scalars_[t].coeff = beta * scalars_[t].coeff + (1.0 - beta) * ratios_[t];
    if (ctx.args.step == config_.freeze_step)
      ctx.for_each_segment([](Segment& s) { (*s.states)[2].copy_((*s.states)[1]); });
  }

  // Each tensor's scale for compression (those not set yet), from the momentum the warm-up
  // left: the mean of the tensors' rms over the whole model (every pipeline stage's, so a tied
  // layer's copies get one scale), divided by the tensor's own rms.
  void set_scales(const StepContext& ctx, const TensorIndex& index) {
    at::Tensor sq = at::zeros({int64_t(index.count())}, at::kDouble);  // sum of m² per tensor
    at::Tensor numel = at::zeros({int64_t(index.count())}, at::kDouble);
    for (const auto& [u, c] : units_) {
      const std::vector<zero::ParamSlot>& slots = *ctx.unit_tensors[u];
      for (size_t t = 0; t < slots.size(); ++t) {
        const at::Tensor m = c.whole.momentum.narrow(0, slots[t].offset, slots[t].numel);
        sq[int64_t(index.first[u] + t)] = m.square().sum(at::kDouble).item<double>();
        numel[int64_t(index.first[u] + t)] = double(slots[t].numel);
      }
    }
    at::Tensor both = at::stack({sq, numel});
    reduce_over_tensor_group(ctx, index, both, comm::ReduceOp::Sum);  // a split tensor's whole sums
    const at::Tensor rms = (both[0] / both[1].clamp_min(1.0)).sqrt();
    at::Tensor mean = at::stack({rms.sum(), at::scalar_tensor(double(rms.numel()), at::kDouble)});
    if (ctx.pipe_group) ctx.pipe_group->all_reduce(mean, comm::ReduceOp::Sum).wait();
    const double united = (mean[0] / mean[1]).item<double>();
    for (size_t t = 0; t < scalars_.size(); ++t) {
      const double r = rms[int64_t(t)].item<double>();
      if (scalars_[t].scale == 0.0) scalars_[t].scale = r > 0.0 && united > 0.0 ? united / r : 1.0;
    }
  }

  // m of unit u multiplied (or divided) tensor by tensor by the tensors' scales.
  void scale_momentum(at::Tensor& m, const StepContext& ctx, const TensorIndex& index, size_t u, bool divide) const {
    const std::vector<zero::ParamSlot>& slots = *ctx.unit_tensors[u];
    for (size_t t = 0; t < slots.size(); ++t) {
      at::Tensor part = m.narrow(0, slots[t].offset, slots[t].numel);
      const double s = scalars_[index.first[u] + t].scale;
      divide ? part.div_(s) : part.mul_(s);
    }
  }

  void compressed_step(StepContext& ctx, const TensorIndex& index) {
    comm::Communicator& group = *ctx.data_group;
    ctx.for_each_segment([&](Segment& s) { unit_comm(s, group); });
    // The first compressed step since the start or a load sets the scales still unset. With
    // pipeline stages the stages agree first whether any is (set_scales is collective over them).
    if (!scales_checked_) {
      at::Tensor unset = at::scalar_tensor(
          std::any_of(scalars_.begin(), scalars_.end(), [](const TensorScalars& s) { return s.scale == 0.0; }) ? 1.0 : 0.0,
          at::kDouble);
      if (ctx.pipe_group) ctx.pipe_group->all_reduce(unset, comm::ReduceOp::Max).wait();
      if (unset.item<double>() > 0) set_scales(ctx, index);
      scales_checked_ = true;
    }
    const int64_t T = int64_t(index.count());
    at::Tensor norms = at::zeros({2, T}, at::kDouble);  // ||p||², ||u||² per tensor
    at::Tensor factors = at::zeros({T}, at::kDouble);   // max (sqrt(v) + eps) / (sqrt(v') + eps)
    ctx.for_each_segment([&](Segment& s) { exchange_momentum(s, ctx, index, norms, factors); });
    if (ctx.partitioned && group.size() > 1) {
      group.all_reduce(norms, comm::ReduceOp::Sum).wait();
      group.all_reduce(factors, comm::ReduceOp::Max).wait();
    }
    reduce_over_tensor_group(ctx, index, norms, comm::ReduceOp::Sum);
    reduce_over_tensor_group(ctx, index, factors, comm::ReduceOp::Max);
    std::vector<double> rate(static_cast<size_t>(T));  // lr x the tensor's coefficient
    const double *pn = norms.data_ptr<double>(), *pf = factors.data_ptr<double>();
    for (int64_t t = 0; t < T; ++t)
      rate[size_t(t)] = ctx.args.lr * coefficient(scalars_[size_t(t)], pf[t], pn[t], pn[T + t]);
    const detail::LambHyper h = hyper();
    ctx.for_each_segment([&](Segment& s) {
      const std::vector<TensorPiece> pieces = tensor_pieces(ctx, s, index);
      float* pw = s.master.data_ptr<float>();
      const float *pm = (*s.states)[0].data_ptr<float>(), *pv = (*s.states)[1].data_ptr<float>();
      pool_.run(int64_t(pieces.size()), [&](int64_t i, int) {
        const TensorPiece& p = pieces[size_t(i)];
        detail::lamb_apply(pw + p.begin, pm + p.begin, pv + p.begin, p.end - p.begin, h, float(rate[p.tensor]));
      });
      write_copy(s.master, s.copy);
    });
  }

  detail::LambHyper hyper() const {
    detail::LambHyper h;
    h.b1 = float(config_.betas[0]), h.b2 = float(config_.betas[1]), h.eps = float(config_.eps);
    h.weight_decay = float(config_.weight_decay);
    return h;  // eps outside the square root
  }

  // Segment s's unit: its momentum takes this rank's gradient and crosses the group compressed;
  // this rank's part gets the new momentum and the fresh variance, and adds its tensors' pieces
  // to the norms and factor maxima.
  void exchange_momentum(Segment& s, const StepContext& ctx, const TensorIndex& index, at::Tensor& norms,
                         at::Tensor& factors) {
    UnitComm& c = units_.at(s.unit);
    const double b1 = ctx.args.beta1.value_or(config_.betas[0]);
    at::Tensor& m = (*s.states)[0];
    const at::Tensor& v = (*s.states)[1];
    at::Tensor& fresh = (*s.states)[2];
    const at::Tensor last = m.clone();  // before the update (at stage 0 m is the whole momentum itself)
    at::Tensor& momentum = c.whole.momentum;
    const at::Tensor g = s.unit_grad.narrow(0, 0, s.unit_numel);
    momentum.mul_(b1).add_(g.scalar_type() == at::kFloat ? g : g.to(at::kFloat), 1.0 - b1);
    scale_momentum(momentum, ctx, index, s.unit, false);
    if (c.reduce) c.reduce->all_reduce(momentum);
    scale_momentum(momentum, ctx, index, s.unit, true);
    momentum.masked_fill_(c.whole.zero_variance, 0.0);
    const int64_t n = s.master.numel(), real = std::clamp<int64_t>(s.unit_numel - s.unit_offset, 0, n);
    if (m.data_ptr() != momentum.data_ptr()) {
      m.zero_();
      if (real > 0) m.narrow(0, 0, real).copy_(momentum.narrow(0, s.unit_offset, real));
    }
    // The pieces, in chunks over the pool; their sums added in a fixed order.
    const std::vector<TensorPiece> pieces = tensor_pieces(ctx, s, index);
    std::vector<detail::OneBitLambSums> part(pieces.size());
    detail::LambHyper h = hyper();
    h.b1 = float(b1);
    const float *pm = m.data_ptr<float>(), *pl = last.data_ptr<float>(), *pv = v.data_ptr<float>();
    const float* pw = s.master.data_ptr<float>();
    float* pfresh = fresh.data_ptr<float>();
    pool_.run(int64_t(pieces.size()), [&](int64_t i, int) {
      const TensorPiece& p = pieces[size_t(i)];
      detail::onebit_lamb_moments(pm + p.begin, pl + p.begin, pv + p.begin, pfresh + p.begin, pw + p.begin,
                                  p.end - p.begin, h, part[size_t(i)]);
    });
    double* pn = norms.data_ptr<double>();
    double* pf = factors.data_ptr<double>();
    const int64_t T = factors.numel();
    for (size_t i = 0; i < pieces.size(); ++i) {
      const size_t t = pieces[i].tensor;
      pn[t] += part[i].prelim2, pn[T + int64_t(t)] += part[i].update2;
      pf[t] = std::max(pf[t], double(part[i].factor));
    }
  }

  // The step's trust ratio of a tensor: its frozen average times the factor, which moves only
  // within its limits (and the tensor's last factor is updated).
  double coefficient(TensorScalars& s, double factor, double prelim2, double update2) const {
    if (config_.weight_decay > 0.0) {
      const double q = update2 > 0.0 ? std::min(1.0, std::sqrt(prelim2) / std::sqrt(update2)) : 1.0;
      factor = factor * q + (1.0 - q);
    }
    factor = std::clamp(factor, config_.factor_min, config_.factor_max);
    factor = std::clamp(factor, s.factor * (1.0 - config_.factor_threshold), s.factor * (1.0 + config_.factor_threshold));
    s.factor = factor;
    return s.coeff * factor;
  }

  std::unique_ptr<FlatOptimizer> lamb_;  // the warm-up steps
  std::vector<double> ratios_;           // the last warm-up step's trust ratios
  std::vector<std::string> names_;       // the step's tensors, in TensorIndex order
  std::vector<TensorScalars> scalars_;   // per tensor, in the same order
  std::map<std::string, TensorScalars> loaded_;  // from a checkpoint, until the next step binds them
  bool after_load_ = false;                       // no step since load_tensor_states()
  bool scales_checked_ = false;                   // every tensor's scale set since the start or a load
  ops::ThreadPool pool_;
};

}  // namespace

std::unique_ptr<FlatOptimizer> make_onebit_lamb(const OptimizerConfig& config) {
  if (config.bias_correction)
    throw ConfigError("optimizer.params.bias_correction: 1-bit Lamb corrects no bias; set it to false");
  if (config.eps <= 0) throw ConfigError(ds::str("optimizer.params.eps: 1-bit Lamb needs eps > 0, got ", config.eps));
  if (config.coeff_beta < 0 || config.coeff_beta >= 1)
    throw ConfigError(ds::str("optimizer.params.coeff_beta must be in [0, 1), got ", config.coeff_beta));
  if (config.factor_min <= 0 || config.factor_max < config.factor_min || config.factor_threshold < 0)
    throw ConfigError(ds::str("optimizer.params: 1-bit Lamb needs 0 < factor_min <= factor_max and factor_threshold >= 0, "
                              "got ", config.factor_min, ", ", config.factor_max, " and ", config.factor_threshold));
  return std::make_unique<OneBitLamb>(config);
}

}  // namespace ds::optim
