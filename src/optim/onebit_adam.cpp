// 1-bit Adam (Tang et al., 2021; DeepSpeed's OnebitAdam) over the engine's flat masters, at
// ZeRO stages 0-2.
//
// Warm-up, optimizer steps 1..freeze_step: the AdamW kernel's own step (decoupled weight
// decay, as DeepSpeed's OnebitAdam applies it) on the gradients the ZeRO stage averaged as
// usual, so these steps are bit for bit an "Adam" run with the same parameters.
//
// Compressed phase, from step freeze_step + 1: the engine averages no gradient
// (GradSync::kNone). Per unit, each rank folds its own gradient into the unit's whole momentum,
// the momentum crosses the data-parallel group through compress::OneBitAllReduce (sign bits
// and a scale per chunk, worker and server error feedback), and the update uses the variance
// frozen at freeze_step:
//   m = b1 m + (1 - b1) g_local;   m = compressed mean of m over the ranks
//   p = p (1 - lr wd) - lr / bc1 * m / (sqrt(v) / sqrt(bc2) + eps)
// with bc1 = 1 - b1^t and bc2 = 1 - b2^freeze_step under bias_correction (DeepSpeed's
// OnebitAdam corrects neither; "bias_correction": false reproduces it). On one rank nothing is
// compressed (as in DeepSpeed): the momentum is the rank's own.
//
// Under ZeRO 1-2 the exp_avg and exp_avg_sq states are this rank's shard (saved, reshaped and
// resumed like Adam's), while the compressed phase also keeps the unit's whole momentum (rebuilt
// by an all-gather of the shards when the phase starts or after a load: they are slices of the
// same compressed mean) and the error feedback. The worker error is as long as the unit on every
// rank: it is what this rank's own compression dropped. The server error covers 1/N of it.
#include "onebit_adam.h"

#include <ATen/ATen.h>

#include <cmath>
#include <map>

#include "ds/common/error.h"
#include "ds/common/strings.h"
#include "compressed_units.h"
#include "ds/compress/onebit.h"

namespace ds::optim {

namespace {

using NamedTensors = std::vector<std::pair<std::string, at::Tensor>>;

class OneBitAdam final : public FlatOptimizer {
 public:
  explicit OneBitAdam(OptimizerConfig c) : FlatOptimizer(c), adam_(make_optimizer(warmup_config(c))) {}

  std::string name() const override {
    return ds::str("OneBitAdam (freeze_step ", config_.freeze_step, "; warm-up: ", adam_->name(), ")");
  }
  std::vector<StateSpec> state_specs() const override { return adam_->state_specs(); }
  std::vector<at::Tensor> init_state(int64_t n) const override { return adam_->init_state(n); }
  void step(at::Tensor& master, const at::Tensor& grad, std::vector<at::Tensor>& state, const StepArgs& args,
            const WorkingCopy* copy) override {
    adam_->step(master, grad, state, args, copy);
  }

  zero::GradSync grad_sync(zero::GradSync standard, int64_t next_step) const override {
    return compressed(next_step) ? zero::GradSync::kNone : standard;
  }
  std::string phase(int64_t step) const override {
    if (step < 1) return "";
    return compressed(step) ? "1-bit Adam: compressed" : "1-bit Adam: warm-up";
  }

  void step_all(StepContext& ctx) override {
    if (!compressed(ctx.args.step)) return FlatOptimizer::step_all(ctx);
    if (ctx.sync != zero::GradSync::kNone)
      throw Error(ds::str("1-bit Adam step ", ctx.args.step, ": the gradients were averaged (", zero::to_string(ctx.sync),
                          "), but the compressed phase needs each rank's own"));
    ctx.for_each_segment([&](Segment& s) { compressed_step(s, ctx); });
  }

  NamedTensors rank_states() const override {
    NamedTensors out;
    errors_.append_states(out);
    return out;
  }
  void load_rank_states(const NamedTensors& states, const SegmentVisitor&) override {
    units_.clear();  // the whole momentum is rebuilt from the loaded shards
    errors_.load(states);
  }
  void reset_rank_states() override {
    units_.clear();
    errors_.reset();
  }

 private:
  // The compressed phase's per-unit state on this rank.
  struct UnitComm {
    compress::OneBitAllReduce* reduce = nullptr;  // in errors_; null on one rank
    at::Tensor momentum;  // the unit's whole momentum (its real elements): exp_avg itself when this rank holds all of it
    // Where the frozen variance is 0 (one byte per element): an element that never had a
    // gradient keeps a zero momentum (compression cannot send an exact 0, and m / (sqrt(0) +
    // eps) would throw it away). DeepSpeed's OnebitAdam asks the user for this mask (exp_avg_mask).
    at::Tensor zero_variance;
  };

  static OptimizerConfig warmup_config(OptimizerConfig c) {
    if (c.freeze_step < 1)
      throw ConfigError(ds::str("optimizer.params.freeze_step must be >= 1 (the variance is estimated during the "
                                "warm-up and frozen after it), got ", c.freeze_step));
    c.type = OptimizerType::kAdamW;  // DeepSpeed's OnebitAdam: update += weight_decay * p
    return c;
  }
  bool compressed(int64_t step) const { return step > config_.freeze_step; }

  UnitComm& unit_comm(const Segment& s, comm::Communicator& group) {
    auto it = units_.find(s.unit);
    if (it != units_.end()) return it->second;
    UnitComm c;
    at::Tensor& exp_avg = (*s.states)[0];
    const at::Tensor& exp_avg_sq = (*s.states)[1];
    if (exp_avg.numel() == s.unit_padded_numel) {  // this rank holds the whole unit (stage 0)
      c.momentum = exp_avg.narrow(0, 0, s.unit_numel);  // contiguous from element 0
      c.zero_variance = exp_avg_sq.narrow(0, 0, s.unit_numel).eq(0);
    } else {  // ZeRO 1-2: every rank's shard of the same momentum, in rank order
      if (exp_avg.numel() * group.size() != s.unit_padded_numel)
        throw Error(ds::str("1-bit Adam: unit ", s.unit, "'s part has ", exp_avg.numel(), " elements; ", group.size(),
                            " ranks of that do not make its ", s.unit_padded_numel));
      at::Tensor full = at::empty({s.unit_padded_numel}, at::kFloat);
      group.all_gather(full, exp_avg).wait();
      c.momentum = full.narrow(0, 0, s.unit_numel).clone();
      at::Tensor zero = at::empty({s.unit_padded_numel}, at::kByte);
      group.all_gather(zero, exp_avg_sq.eq(0).to(at::kByte)).wait();
      c.zero_variance = zero.narrow(0, 0, s.unit_numel).to(at::kBool);
    }
    c.reduce = errors_.get(s.unit, s.unit_numel, group);
    return units_.emplace(s.unit, std::move(c)).first->second;
  }

  void compressed_step(Segment& s, const StepContext& ctx) {
    comm::Communicator& group = *ctx.data_group;
    if (!s.unit_grad.defined())
      throw Error(ds::str("1-bit Adam: unit ", s.unit, " keeps no whole gradient on this rank"));
    UnitComm& c = unit_comm(s, group);
    const double b1 = ctx.args.beta1.value_or(config_.betas[0]), b2 = config_.betas[1];
    const at::Tensor g = s.unit_grad.narrow(0, 0, s.unit_numel);
    c.momentum.mul_(b1).add_(g.scalar_type() == at::kFloat ? g : g.to(at::kFloat), 1.0 - b1);
    if (c.reduce) c.reduce->all_reduce(c.momentum);
    c.momentum.masked_fill_(c.zero_variance, 0.0);
    // This segment's elements [unit_offset, unit_offset + n) of the unit; past unit_numel: padding.
    at::Tensor& exp_avg = (*s.states)[0];
    const at::Tensor& exp_avg_sq = (*s.states)[1];
    const int64_t n = s.master.numel(), real = std::clamp<int64_t>(s.unit_numel - s.unit_offset, 0, n);
    if (exp_avg.data_ptr() != c.momentum.data_ptr()) {
      exp_avg.zero_();
      if (real > 0) exp_avg.narrow(0, 0, real).copy_(c.momentum.narrow(0, s.unit_offset, real));
    }
    const int64_t t = ctx.args.step;
    const double bc1 = config_.bias_correction ? 1.0 - std::pow(b1, double(t)) : 1.0;
    const double bc2 = config_.bias_correction ? 1.0 - std::pow(b2, double(config_.freeze_step)) : 1.0;
    const double lr = ctx.args.lr;
    if (config_.weight_decay != 0.0) s.master.mul_(1.0 - lr * config_.weight_decay);
    at::Tensor denom = exp_avg_sq.sqrt().div_(std::sqrt(bc2)).add_(config_.eps);
    s.master.addcdiv_(exp_avg, denom, -lr / bc1);
    write_copy(s.master, s.copy);
  }

  std::unique_ptr<FlatOptimizer> adam_;  // the warm-up steps, and the states' layout
  std::map<size_t, UnitComm> units_;  // by unit, from the first compressed step
  CompressedUnits errors_;
};

}  // namespace

std::unique_ptr<FlatOptimizer> make_onebit_adam(const OptimizerConfig& config) {
  return std::make_unique<OneBitAdam>(config);
}

}  // namespace ds::optim
