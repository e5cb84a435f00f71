#include "ds/optim/optimizer.h"

#include <ATen/ATen.h>

#include <cmath>

#include "ds/common/error.h"
#include "ds/ops/cpu_optimizer.h"
#include "lamb.h"
#include "onebit_adam.h"
#include "onebit_lamb.h"
#include "zero_one_adam.h"

namespace ds::optim {

namespace {

void check_step_args(const at::Tensor& param, const at::Tensor& grad, const std::vector<at::Tensor>& state,
                     size_t nstate, const char* who) {
  if (param.scalar_type() != at::kFloat || !at::isFloatingType(grad.scalar_type()))
    throw Error(ds::str(who, ": expects float32 master parameters and floating-point gradients, got ",
                        param.scalar_type(), " and ", grad.scalar_type()));
  if (param.numel() != grad.numel())
    throw Error(ds::str(who, ": parameter has ", param.numel(), " elements but gradient ", grad.numel()));
  if (state.size() != nstate) throw Error(ds::str(who, ": expected ", nstate, " state tensors, got ", state.size()));
  for (const auto& s : state)
    if (s.numel() != param.numel()) throw Error(ds::str(who, ": state has ", s.numel(), " elements, parameter ", param.numel()));
}

// torch.optim.Adam / AdamW arithmetic, in place.
class TorchAdam final : public FlatOptimizer {
 public:
  explicit TorchAdam(OptimizerConfig c) : FlatOptimizer(std::move(c)) {}
  std::string name() const override { return config_.decoupled_weight_decay() ? "AdamW" : "Adam"; }
  std::vector<StateSpec> state_specs() const override { return {{"exp_avg"}, {"exp_avg_sq"}}; }
  std::vector<at::Tensor> init_state(int64_t n) const override { return {at::zeros({n}), at::zeros({n})}; }
  void step(at::Tensor& p, const at::Tensor& grad_in, std::vector<at::Tensor>& st, const StepArgs& args,
            const WorkingCopy* copy) override {
    check_step_args(p, grad_in, st, 2, "Adam");
    const at::Tensor grad = grad_in.scalar_type() == at::kFloat ? grad_in : grad_in.to(at::kFloat);  // bf16 shards
    const double lr = args.lr;
    const int64_t step = args.step;
    const double b1 = args.beta1.value_or(config_.betas[0]), b2 = config_.betas[1], wd = config_.weight_decay;
    at::Tensor g = grad;
    if (wd != 0.0) {
      if (config_.decoupled_weight_decay()) p.mul_(1.0 - lr * wd);
      else g = grad.add(p, wd);
    }
    at::Tensor& m = st[0];
    at::Tensor& v = st[1];
    m.mul_(b1).add_(g, 1.0 - b1);
    v.mul_(b2).addcmul_(g, g, 1.0 - b2);
    double bc1 = config_.bias_correction ? 1.0 - std::pow(b1, double(step)) : 1.0;
    double bc2 = config_.bias_correction ? 1.0 - std::pow(b2, double(step)) : 1.0;
    at::Tensor denom = (v.sqrt() / std::sqrt(bc2)).add_(config_.eps);
    p.addcdiv_(m, denom, -lr / bc1);
    write_copy(p, copy);
  }
};

// torch.optim.SGD arithmetic (momentum buffer starts as the first gradient).
class TorchSgd final : public FlatOptimizer {
 public:
  explicit TorchSgd(OptimizerConfig c) : FlatOptimizer(std::move(c)) {}
  std::string name() const override { return "SGD"; }
  std::vector<StateSpec> state_specs() const override {
    return config_.momentum != 0.0 ? std::vector<StateSpec>{{"momentum_buffer"}} : std::vector<StateSpec>{};
  }
  std::vector<at::Tensor> init_state(int64_t n) const override {
    return config_.momentum != 0.0 ? std::vector<at::Tensor>{at::zeros({n})} : std::vector<at::Tensor>{};
  }
  void step(at::Tensor& p, const at::Tensor& grad_in, std::vector<at::Tensor>& st, const StepArgs& args,
            const WorkingCopy* copy) override {
    const at::Tensor grad = grad_in.scalar_type() == at::kFloat ? grad_in : grad_in.to(at::kFloat);  // bf16 shards
    const double momentum = args.beta1.value_or(config_.momentum);
    const double lr = args.lr;
    const int64_t step = args.step;
    check_step_args(p, grad, st, config_.momentum != 0.0 ? 1 : 0, "SGD");
    at::Tensor g = config_.weight_decay != 0.0 ? grad.add(p, config_.weight_decay) : grad;
    if (config_.momentum != 0.0) {
      at::Tensor& buf = st[0];
      if (step == 1) buf.copy_(g);
      else buf.mul_(momentum).add_(g, 1.0 - config_.dampening);
      g = config_.nesterov ? g.add(buf, momentum) : buf;
    }
    p.add_(g, -lr);
    write_copy(p, copy);
  }
};

// The SIMD CPU kernels (ds::ops): DeepSpeed's default for Adam/AdamW (its FusedAdam / CPUAdam
// role), and the only implementation of Adagrad and Lion here.
class KernelOptimizer final : public FlatOptimizer {
 public:
  KernelOptimizer(OptimizerConfig c, ops::OptimizerKind kind) : FlatOptimizer(c), kernel_(options_for(c, kind)) {}
  std::string name() const override {
    return ds::str(optimizer_type_name(config_.type), " (CPU ", kernel_.simd_target().name, " kernel, ",
                   kernel_.threads(), " threads)");
  }
  std::vector<at::Tensor> init_state(int64_t n) const override { return kernel_.make_state(n); }
  std::vector<StateSpec> state_specs() const override {
    switch (kernel_.options().kind) {
      case ops::OptimizerKind::Adam:
      case ops::OptimizerKind::AdamW: return {{"exp_avg"}, {"exp_avg_sq"}};
      case ops::OptimizerKind::Adagrad: return {{"sum"}};
      case ops::OptimizerKind::Lion: return {{"exp_avg"}};
    }
    throw Error("state_specs: unknown optimizer kind");
  }
  // The working copy is written in the kernel's own pass over memory.
  void step(at::Tensor& p, const at::Tensor& grad, std::vector<at::Tensor>& st, const StepArgs& args,
            const WorkingCopy* copy) override {
    if (args.beta1 && *args.beta1 != kernel_.options().beta1) kernel_.set_beta1(*args.beta1);
    if (!copy) {
      kernel_.step(p, grad, st, args.step, args.lr);
      return;
    }
    at::Tensor dst = copy->dst;
    kernel_.step(p, grad, st, args.step, args.lr, &dst, copy->round_to);
  }

 private:
  static ops::CpuOptimizerOptions options_for(const OptimizerConfig& c, ops::OptimizerKind kind) {
    ops::CpuOptimizerOptions o;
    o.kind = kind;
    o.lr = c.lr;
    o.beta1 = c.betas[0], o.beta2 = c.betas[1];
    o.eps = c.eps;
    o.weight_decay = c.weight_decay;
    o.bias_correction = c.bias_correction;
    o.lr_decay = c.lr_decay;
    o.initial_accumulator_value = c.initial_accumulator_value;
    return o;
  }
  ops::CpuOptimizer kernel_;
};

}  // namespace

std::vector<std::string> FlatOptimizer::state_names() const {
  std::vector<std::string> names;
  for (const StateSpec& s : state_specs())
    if (s.kind == StateSpec::Kind::kElementwise) names.push_back(s.name);
  return names;
}

void FlatOptimizer::step_all(StepContext& ctx) {
  ctx.for_each_segment([&](Segment& s) { step(s.master, s.grad, *s.states, ctx.args, s.copy); });
}

void FlatOptimizer::write_copy(const at::Tensor& master, const WorkingCopy* copy) {
  if (!copy) return;
  if (copy->dst.scalar_type() == at::kFloat && copy->round_to != at::kFloat)
    copy->dst.copy_(master.to(copy->round_to));  // fp32 weights holding the rounded values
  else
    copy->dst.copy_(master);
}

namespace {

void check_betas(const OptimizerConfig& c) {
  if (c.betas[0] < 0 || c.betas[0] >= 1 || c.betas[1] < 0 || c.betas[1] >= 1)
    throw ConfigError(ds::str("optimizer.params.betas must be in [0, 1), got [", c.betas[0], ", ", c.betas[1], "]"));
}

}  // namespace

bool keeps_local_gradients(const OptimizerConfig& c) {
  return c.type == OptimizerType::kOneBitAdam || c.type == OptimizerType::kZeroOneAdam ||
         c.type == OptimizerType::kOneBitLamb;
}

std::unique_ptr<FlatOptimizer> make_optimizer(const OptimizerConfig& c) {
  if (c.lr < 0) throw ConfigError(ds::str("optimizer.params.lr must be >= 0, got ", c.lr));
  switch (c.type) {
    case OptimizerType::kAdam:
    case OptimizerType::kAdamW:
      check_betas(c);
      if (c.torch_adam) return std::make_unique<TorchAdam>(c);  // DeepSpeed's torch_adam: torch.optim's path
      return std::make_unique<KernelOptimizer>(c, c.decoupled_weight_decay() ? ops::OptimizerKind::AdamW
                                                                             : ops::OptimizerKind::Adam);
    case OptimizerType::kAdagrad:
      return std::make_unique<KernelOptimizer>(c, ops::OptimizerKind::Adagrad);
    case OptimizerType::kLion:
      return std::make_unique<KernelOptimizer>(c, ops::OptimizerKind::Lion);
    case OptimizerType::kSGD:
      if (c.nesterov && (c.momentum <= 0 || c.dampening != 0))
        throw ConfigError("optimizer.params: nesterov needs momentum > 0 and dampening 0");
      return std::make_unique<TorchSgd>(c);
    case OptimizerType::kOneBitAdam:
      check_betas(c);
      return make_onebit_adam(c);
    case OptimizerType::kZeroOneAdam:
      check_betas(c);
      return make_zero_one_adam(c);
    case OptimizerType::kLamb:
      check_betas(c);
      return make_lamb(c);
    case OptimizerType::kOneBitLamb:
      check_betas(c);
      return make_onebit_lamb(c);
    case OptimizerType::kNone:
      throw ConfigError("the config has no \"optimizer\" section; add one (e.g. {\"type\": \"AdamW\", \"params\": {\"lr\": 1e-3}})");
    default:
      throw ConfigError(ds::str("optimizer.type \"", optimizer_type_name(c.type),
                                "\" (1-bit Adam) is not built yet; use Adam, AdamW, SGD, Adagrad or Lion"));
  }
}

}  // namespace ds::optim
