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

class OneBitAdam final : public CompressedMomentum {
 public:
  explicit OneBitAdam(OptimizerConfig c)
      : CompressedMomentum(c, "1-bit Adam"), adam_(make_optimizer(warmup_config(c))) {}

  std::string name() const override {
    return ds::str("OneBitAdam (freeze_step ", config_.freeze_step, "; warm-up: ", adam_->name(), ")");
  }
  std::vector<StateSpec> state_specs() const override { return adam_->state_specs(); }
  std::vector<at::Tensor> init_state(int64_t n) const override { return adam_->init_state(n); }
  void step(at::Tensor& master, const at::Tensor& grad, std::vector<at::Tensor>& state, const StepArgs& args,
            const WorkingCopy* copy) override {
    adam_->step(master, grad, state, args, copy);
  }

  void step_all(StepContext& ctx) override {
    if (!compressed(ctx.args.step)) return FlatOptimizer::step_all(ctx);
    check_own_gradients(ctx);
    ctx.for_each_segment([&](Segment& s) { compressed_step(s, ctx); });
  }

 private:
  static OptimizerConfig warmup_config(OptimizerConfig c) {
    c.type = OptimizerType::kAdamW;  // DeepSpeed's OnebitAdam: update += weight_decay * p
    return c;
  }

  void compressed_step(Segment& s, const StepContext& ctx) {
    UnitComm& c = unit_comm(s, *ctx.data_group);
    const double b1 = ctx.args.beta1.value_or(config_.betas[0]), b2 = config_.betas[1];
    const at::Tensor g = s.unit_grad.narrow(0, 0, s.unit_numel);
    at::Tensor& momentum = c.whole.momentum;
    momentum.mul_(b1).add_(g.scalar_type() == at::kFloat ? g : g.to(at::kFloat), 1.0 - b1);
    if (c.reduce) c.reduce->all_reduce(momentum);
    momentum.masked_fill_(c.whole.zero_variance, 0.0);
    // This segment's elements [unit_offset, unit_offset + n) of the unit; past unit_numel: padding.
    at::Tensor& exp_avg = (*s.states)[0];
    const at::Tensor& exp_avg_sq = (*s.states)[1];
    const int64_t n = s.master.numel(), real = std::clamp<int64_t>(s.unit_numel - s.unit_offset, 0, n);
    if (exp_avg.data_ptr() != momentum.data_ptr()) {
      exp_avg.zero_();
      if (real > 0) exp_avg.narrow(0, 0, real).copy_(momentum.narrow(0, s.unit_offset, real));
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
};

}  // namespace

std::unique_ptr<FlatOptimizer> make_onebit_adam(const OptimizerConfig& config) {
  return std::make_unique<OneBitAdam>(config);
}

}  // namespace ds::optim
