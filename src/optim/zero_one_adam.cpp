// 0/1 Adam (Lu et al., 2022; DeepSpeed's ZeroOneAdam) over the engine's flat masters, at ZeRO
// stage 0 (its local steps need every rank to hold the whole optimizer state, as in DeepSpeed).
//
// Steps 1..var_freeze_step ("phase A"): the variance is updated only at steps whose number is a
// multiple of an interval that starts at 1 and doubles after every var_update_scaler updates. On
// those steps the engine averages the gradients exactly (the ZeRO stage's sync) and
//   v = b2 v + (1 - b2) g^2,   m = b1 m + (1 - b1) g;
// on the others it averages nothing (GradSync::kNone) and each rank's own gradient goes through
// the 1-bit compressed all-reduce: m = b1 m + (1 - b1) compressed_mean(g). Either way
//   p = p - lr (m / (sqrt(v) + eps) + wd p).
// After var_freeze_step ("phase B") the variance is frozen and no gradient crosses the wire.
// Each rank takes local steps with its own gradient, accumulating them in u (p - lr update, u
// - lr update, lrs + lr); every local_step_interval steps (an interval that starts at 1 and
// doubles every local_step_scaler steps, up to local_step_clipper) the ranks sync: the local
// steps are undone, u preconditioned back (u (sqrt(v) + eps)) goes through the compressed
// all-reduce, m = -u / lrs and p = p + u / (sqrt(v) + eps). The error feedback restarts at 0 when
// phase B starts (it then compresses another quantity). No bias correction, as in DeepSpeed.
// Elements whose variance is exactly 0 get no compressed momentum (DeepSpeed's exp_avg_mask).
//
// Per rank, beyond Adam's states: the error feedback (the unit's length, and 1/N of it) and in
// phase B u; between two syncs the ranks' weights and momenta differ, so a checkpoint then also
// keeps each rank's own (rank_states) and a resume at the same layout is bit-exact. DeepSpeed's
// first step() is a set-up pass that updates nothing; here step 1 is a real step.
#include "zero_one_adam.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cstring>

#include "compressed_units.h"
#include "ds/common/error.h"
#include "ds/common/strings.h"

namespace ds::optim {

namespace {

using NamedTensors = std::vector<std::pair<std::string, at::Tensor>>;

class ZeroOneAdam final : public FlatOptimizer {
 public:
  explicit ZeroOneAdam(OptimizerConfig c) : FlatOptimizer(std::move(c)) {
    if (config_.bias_correction)
      throw ConfigError("optimizer.params.bias_correction: 0/1 Adam corrects no bias; set it to false");
  }

  std::string name() const override {
    return ds::str("ZeroOneAdam (var_freeze_step ", config_.var_freeze_step, ", local steps up to ",
                   config_.local_step_clipper, ")");
  }
  std::vector<StateSpec> state_specs() const override { return {{"exp_avg"}, {"exp_avg_sq"}}; }
  std::vector<at::Tensor> init_state(int64_t n) const override { return {at::zeros({n}), at::zeros({n})}; }
  void step(at::Tensor&, const at::Tensor&, std::vector<at::Tensor>&, const StepArgs&, const WorkingCopy*) override {
    throw Error("ZeroOneAdam steps the whole model at once (step_all)");
  }

  zero::GradSync grad_sync(zero::GradSync standard, int64_t next_step) const override {
    return variance_step(next_step) ? standard : zero::GradSync::kNone;
  }
  std::string phase(int64_t step) const override {
    if (step < 1) return "";
    if (step <= config_.var_freeze_step)
      return variance_step(step) ? "0/1 Adam: variance step" : "0/1 Adam: compressed gradient";
    return sync_step(step) ? "0/1 Adam: sync" : "0/1 Adam: local step";
  }

  void step_all(StepContext& ctx) override {
    const int64_t t = ctx.args.step;
    comm::Communicator& group = *ctx.data_group;
    if (t <= config_.var_freeze_step) {
      const bool exact = variance_step(t);
      if (exact != (ctx.sync != zero::GradSync::kNone))
        throw Error(ds::str("0/1 Adam step ", t, ": the gradients travelled as ", zero::to_string(ctx.sync),
                            " but this step wants ", exact ? "them averaged" : "each rank's own"));
      ctx.for_each_segment([&](Segment& s) { phase_a(s, ctx, exact, group); });
      return;
    }
    if (t == config_.var_freeze_step + 1) errors_.zero_errors();  // they held gradients; now momenta
    lrs_ += ctx.args.lr;
    const bool sync = sync_step(t);
    ctx.for_each_segment([&](Segment& s) { phase_b(s, ctx, sync, group); });
    if (sync) lrs_ = 0.0;
  }

  NamedTensors rank_states() const override {
    NamedTensors out;
    errors_.append_states(out);
    out.emplace_back("lrs", at::full({1}, lrs_, at::kDouble));
    for (const auto& [u, acc] : accumulators_) out.emplace_back(ds::str("unit", u, ".momentum_accumulator"), acc);
    if (lrs_ != 0.0)  // between two syncs: this rank's own weights and momentum
      for (const auto& [u, local] : local_) {
        out.emplace_back(ds::str("unit", u, ".local_master"), local.first);
        out.emplace_back(ds::str("unit", u, ".local_exp_avg"), local.second);
      }
    return out;
  }
  void load_rank_states(const NamedTensors& states, const SegmentVisitor& segments) override {
    reset_rank_states();
    errors_.load(states);
    std::map<std::string, at::Tensor> by_name(states.begin(), states.end());
    if (auto it = by_name.find("lrs"); it != by_name.end()) lrs_ = it->second.item<double>();
    segments([&](Segment& s) {
      auto find = [&](const char* what) {
        auto it = by_name.find(ds::str("unit", s.unit, ".", what));
        return it == by_name.end() ? at::Tensor() : it->second;
      };
      auto put = [&](const char* what, const at::Tensor& saved, at::Tensor into) {
        if (saved.sizes() != into.sizes())
          throw Error(ds::str("the checkpoint's 0/1 Adam ", what, " of unit ", s.unit, " has shape ", saved.sizes(),
                              " but this run's has ", into.sizes()));
        into.copy_(saved);
      };
      if (at::Tensor acc = find("momentum_accumulator"); acc.defined()) {
        accumulators_[s.unit] = at::zeros({s.unit_numel});
        put("momentum_accumulator", acc, accumulators_[s.unit]);
      }
      at::Tensor master = find("local_master"), exp_avg = find("local_exp_avg");
      if (master.defined() && exp_avg.defined()) {  // saved between two syncs: this rank's own
        put("weights", master, s.master.narrow(0, 0, s.unit_numel));
        put("momentum", exp_avg, (*s.states)[0].narrow(0, 0, s.unit_numel));
        local_[s.unit] = {s.master.narrow(0, 0, s.unit_numel), (*s.states)[0].narrow(0, 0, s.unit_numel)};
        write_copy(s.master, s.copy);
      }
    });
  }
  void reset_rank_states() override {
    errors_.reset();
    accumulators_.clear();
    local_.clear();
    lrs_ = 0.0;
  }

 private:
  // Whether phase-A step t updates the variance (and so averages the gradients exactly).
  bool variance_step(int64_t t) const {
    if (t > config_.var_freeze_step) return false;
    int64_t interval = 1, counter = 0;
    for (int64_t s = 1; s < t; ++s)
      if (s % interval == 0 && ++counter == config_.var_update_scaler) {
        counter = 0;
        if (interval < (int64_t(1) << 40)) interval *= 2;
      }
    return t % interval == 0;
  }
  // Whether phase-B step t ends with a sync.
  bool sync_step(int64_t t) const {
    const int64_t k = t - config_.var_freeze_step;  // 1, 2, ... in phase B
    const int64_t doublings = (k - 1) / config_.local_step_scaler;
    int64_t interval = 1;
    for (int64_t d = 0; d < doublings && interval < config_.local_step_clipper; ++d) interval *= 2;
    return t % std::min(interval, config_.local_step_clipper) == 0;
  }

  static at::Tensor real(const at::Tensor& t, int64_t n) { return t.narrow(0, 0, n); }
  // This rank's own gradient of the unit in fp32: a copy when `copy`, else a view when it is
  // fp32 already.
  at::Tensor local_grad(const Segment& s, bool copy = false) const {
    if (!s.unit_grad.defined()) throw Error(ds::str("0/1 Adam: unit ", s.unit, " keeps no whole gradient on this rank"));
    return real(s.unit_grad, s.unit_numel).to(at::kFloat, /*non_blocking=*/false, copy);
  }
  void check_whole(const Segment& s) const {
    if (s.master.numel() != s.unit_padded_numel)
      throw Error("0/1 Adam needs the whole optimizer state on every rank (ZeRO stage 0)");
  }
  // p -= lr (m / (sqrt(v) + eps) + wd p), on the unit's real elements; returns the update.
  at::Tensor apply_update(at::Tensor p, const at::Tensor& m, const at::Tensor& v, double lr) const {
    at::Tensor update = m / (v.sqrt() + config_.eps);
    if (config_.weight_decay > 0.0) update.add_(p, config_.weight_decay);
    p.add_(update, -lr);
    return update;
  }

  void phase_a(Segment& s, const StepContext& ctx, bool exact, comm::Communicator& group) {
    check_whole(s);
    const double b1 = ctx.args.beta1.value_or(config_.betas[0]), b2 = config_.betas[1];
    at::Tensor p = real(s.master, s.unit_numel), m = real((*s.states)[0], s.unit_numel),
               v = real((*s.states)[1], s.unit_numel);
    if (exact) {
      at::Tensor g = real(s.grad, s.unit_numel).to(at::kFloat);
      v.mul_(b2).addcmul_(g, g, 1.0 - b2);
      m.mul_(b1).add_(g, 1.0 - b1);
    } else {
      auto* reduce = errors_.get(s.unit, s.unit_numel, group);
      at::Tensor g = local_grad(s, /*copy=*/reduce != nullptr);  // the mean replaces the copy
      if (reduce) {
        reduce->all_reduce(g);
        g.masked_fill_(v.eq(0), 0.0);  // see onebit_adam.cpp: no momentum where no gradient ever was
      }
      m.mul_(b1).add_(g, 1.0 - b1);
    }
    apply_update(p, m, v, ctx.args.lr);
    write_copy(s.master, s.copy);
  }

  void phase_b(Segment& s, const StepContext& ctx, bool sync, comm::Communicator& group) {
    check_whole(s);
    const double b1 = ctx.args.beta1.value_or(config_.betas[0]);
    at::Tensor p = real(s.master, s.unit_numel), m = real((*s.states)[0], s.unit_numel),
               v = real((*s.states)[1], s.unit_numel);
    at::Tensor& u = accumulators_[s.unit];
    if (!u.defined()) u = at::zeros({s.unit_numel});
    m.mul_(b1).add_(local_grad(s), 1.0 - b1);
    u.add_(apply_update(p, m, v, ctx.args.lr), -ctx.args.lr);
    if (sync) {
      p.sub_(u);  // back to the weights of the last sync
      const at::Tensor denom = v.sqrt().add_(config_.eps);
      u.mul_(denom);
      if (auto* reduce = errors_.get(s.unit, s.unit_numel, group)) {
        reduce->all_reduce(u);
        u.masked_fill_(v.eq(0), 0.0);
      }
      m.copy_(u).div_(-lrs_);
      p.add_(u / denom);
      u.zero_();
      local_.erase(s.unit);
    } else {
      local_[s.unit] = {p, m};  // views: what a checkpoint between syncs keeps of this rank
    }
    write_copy(s.master, s.copy);
  }

  // The error feedback and the update accumulators of phase B (one per unit).
  int64_t held_bytes() const override {
    int64_t n = errors_.bytes();
    for (const auto& [u, t] : accumulators_) n += int64_t(t.nbytes());
    return n;
  }
  int64_t held_bytes_of_unit(int64_t numel, int64_t, int64_t, int ranks) const override {
    return 4 * numel + CompressedUnits::bytes_of_unit(numel, ranks);
  }

  CompressedUnits errors_;
  std::map<size_t, at::Tensor> accumulators_;  // u per unit (phase B)
  std::map<size_t, std::pair<at::Tensor, at::Tensor>> local_;  // (weights, momentum) views between syncs
  double lrs_ = 0.0;  // the learning rates summed since the last sync
};

}  // namespace

std::unique_ptr<FlatOptimizer> make_zero_one_adam(const OptimizerConfig& config) {
  return std::make_unique<ZeroOneAdam>(config);
}

}  // namespace ds::optim
