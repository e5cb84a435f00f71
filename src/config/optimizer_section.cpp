// The "optimizer" and "scheduler" sections: a type, then the parameters of that type.
#include <algorithm>

#include "ds/common/error.h"
#include "ds/common/strings.h"
#include "sections.h"

namespace ds {

const char* optimizer_type_name(OptimizerType type) {
  switch (type) {
    case OptimizerType::kNone:
      return "";
    case OptimizerType::kAdam:
      return "Adam";
    case OptimizerType::kAdamW:
      return "AdamW";
    case OptimizerType::kSGD:
      return "SGD";
    case OptimizerType::kAdagrad:
      return "Adagrad";
    case OptimizerType::kLion:
      return "Lion";
    case OptimizerType::kOneBitAdam:
      return "OneBitAdam";
    case OptimizerType::kZeroOneAdam:
      return "ZeroOneAdam";
    case OptimizerType::kLamb:
      return "Lamb";
    case OptimizerType::kOneBitLamb:
      return "OneBitLamb";
  }
  return "";
}

OptimizerConfig optimizer_defaults(OptimizerType type) {
  OptimizerConfig o;  // FusedAdam / DeepSpeedCPUAdam / FusedLion / OnebitAdam / torch SGD (>= 2.2) defaults
  o.type = type;
  if (type == OptimizerType::kAdagrad) {  // DeepSpeedCPUAdagrad
    o.lr = 1e-2;
    o.eps = 1e-10;
  }
  if (type == OptimizerType::kZeroOneAdam || type == OptimizerType::kOneBitLamb)
    o.bias_correction = false;  // accepted and ignored by DeepSpeed
  return o;
}

const char* scheduler_type_name(SchedulerType type) {
  switch (type) {
    case SchedulerType::kNone:
      return "";
    case SchedulerType::kWarmupLR:
      return "WarmupLR";
    case SchedulerType::kWarmupDecayLR:
      return "WarmupDecayLR";
    case SchedulerType::kWarmupCosineLR:
      return "WarmupCosineLR";
    case SchedulerType::kOneCycle:
      return "OneCycle";
    case SchedulerType::kLRRangeTest:
      return "LRRangeTest";
  }
  return "";
}

}  // namespace ds

namespace ds::config_detail {

namespace {

using O = OptimizerConfig;
using S = SchedulerConfig;

constexpr OptimizerType kOptimizerTypes[] = {OptimizerType::kAdam, OptimizerType::kAdamW,
                                             OptimizerType::kSGD,  OptimizerType::kAdagrad,
                                             OptimizerType::kLion, OptimizerType::kOneBitAdam,
                                             OptimizerType::kZeroOneAdam, OptimizerType::kLamb,
                                             OptimizerType::kOneBitLamb};
constexpr SchedulerType kSchedulerTypes[] = {SchedulerType::kWarmupLR, SchedulerType::kWarmupDecayLR,
                                             SchedulerType::kWarmupCosineLR, SchedulerType::kOneCycle,
                                             SchedulerType::kLRRangeTest};

// DeepSpeed optimizers deepspeed.cpp does not implement, and torch.optim names DeepSpeed would accept.
const std::vector<std::string> kRejectedOptimizers = {
    "MuAdam", "MuAdamW", "MuSGD",   "Muon",  "Adadelta",  "Adafactor",
    "Adamax", "ASGD",       "LBFGS",       "NAdam",  "RAdam",   "RMSprop", "Rprop", "SparseAdam"};
const std::vector<std::string> kTorchSchedulers = {"LambdaLR",
                                                   "MultiplicativeLR",
                                                   "StepLR",
                                                   "MultiStepLR",
                                                   "ConstantLR",
                                                   "LinearLR",
                                                   "ExponentialLR",
                                                   "SequentialLR",
                                                   "CosineAnnealingLR",
                                                   "ChainedScheduler",
                                                   "ReduceLROnPlateau",
                                                   "CyclicLR",
                                                   "CosineAnnealingWarmRestarts",
                                                   "OneCycleLR",
                                                   "PolynomialLR"};

std::string supported_optimizers() {
  std::string list;
  for (OptimizerType t : kOptimizerTypes) list += str(list.empty() ? "" : ", ", optimizer_type_name(t));
  return list;
}

// DeepSpeed matches its own optimizer names ignoring case; so do we, for every supported name.
OptimizerType parse_optimizer_type(ObjectReader& in) {
  const Json* v = in.find("type");
  std::string path = in.path_of("type");
  if (!v) in.ctx().fail(path, str("required key is missing (one of ", supported_optimizers(), ")"));
  if (!v->is_string()) in.ctx().fail(path, str("expected an optimizer name, got ", describe(*v)));
  const std::string& name = v->get_ref<const std::string&>();
  for (OptimizerType t : kOptimizerTypes)
    if (iequals(name, optimizer_type_name(t))) return t;
  for (const auto& r : kRejectedOptimizers) {
    if (iequals(name, r)) {
      in.ctx().fail(path, str("deepspeed.cpp does not support optimizer ", quote(name),
                              "; supported: ", supported_optimizers()));
    }
  }
  std::vector<std::string> names;
  for (OptimizerType t : kOptimizerTypes) names.push_back(optimizer_type_name(t));
  std::string guess = nearest(name, names);
  in.ctx().fail(path, str("unknown optimizer ", quote(name),
                          guess.empty() ? "" : str(" (did you mean ", quote(guess), "?)"),
                          "; supported: ", supported_optimizers()));
}

Schema<O> build_optimizer_params(OptimizerType t) {
  bool adam = t == OptimizerType::kAdam || t == OptimizerType::kAdamW;
  const bool zero_one = t == OptimizerType::kZeroOneAdam, onebit_lamb = t == OptimizerType::kOneBitLamb;
  const bool onebit = t == OptimizerType::kOneBitAdam || zero_one || onebit_lamb;  // the keys they share
  const bool lamb = t == OptimizerType::kLamb || onebit_lamb;
  Schema<O> s;
  s.field("lr", &O::lr, at_least(0));
  if (adam || onebit || lamb || t == OptimizerType::kLion) s.field("betas", &O::betas, between(0, 1));
  if (adam || onebit || lamb || t == OptimizerType::kAdagrad) s.field("eps", &O::eps, at_least(0));
  s.field("weight_decay", &O::weight_decay, at_least(0));
  if (adam || onebit || lamb) s.field("bias_correction", &O::bias_correction);
  if (adam) s.field("torch_adam", &O::torch_adam).field("adam_w_mode", &O::adam_w_mode);
  if (adam || onebit || lamb || t == OptimizerType::kAdagrad) s.unsupported("amsgrad", false, "the AMSGrad variant");
  if (lamb) {
    if (!onebit) s.field("eps_inside_sqrt", &O::eps_inside_sqrt);
    s.field("max_coeff", &O::max_coeff, at_least(0)).field("min_coeff", &O::min_coeff, at_least(0));
  }
  if (onebit_lamb) {
    s.field("coeff_beta", &O::coeff_beta, between(0, 1))
        .field("factor_max", &O::factor_max, at_least(0))
        .field("factor_min", &O::factor_min, at_least(0))
        .field("factor_threshold", &O::factor_threshold, at_least(0));
  }
  if (t == OptimizerType::kSGD) {
    s.field("momentum", &O::momentum, at_least(0))
        .field("dampening", &O::dampening, at_least(0))
        .field("nesterov", &O::nesterov)
        .unsupported("maximize", false, "maximize (gradient ascent)");
  }
  if (t == OptimizerType::kAdagrad) {
    s.field("lr_decay", &O::lr_decay, at_least(0))
        .field("initial_accumulator_value", &O::initial_accumulator_value, at_least(0));
  }
  if (t == OptimizerType::kOneBitAdam || onebit_lamb) s.field("freeze_step", &O::freeze_step, at_least(1));
  if (zero_one) {
    s.field("var_freeze_step", &O::var_freeze_step, at_least(1))
        .field("var_update_scaler", &O::var_update_scaler, at_least(1))
        .field("local_step_scaler", &O::local_step_scaler, at_least(1))
        .field("local_step_clipper", &O::local_step_clipper, at_least(1));
  }
  if (onebit) {
    s.field("eps_inside_sqrt", &O::eps_inside_sqrt)
        .field("cuda_aware", &O::cuda_aware)
        .field("comm_backend_name", &O::comm_backend_name);
  }
  return s;
}

const Schema<O>& optimizer_params_schema(OptimizerType t) {
  static const std::vector<Schema<O>> schemas = [] {
    std::vector<Schema<O>> v;
    for (int i = 0; i <= static_cast<int>(OptimizerType::kOneBitLamb); ++i)
      v.push_back(build_optimizer_params(static_cast<OptimizerType>(i)));
    return v;
  }();
  return schemas[static_cast<size_t>(t)];
}

// The 1-bit optimizers' keys that name GPU machinery: the compressed all-reduce runs on this job's
// communicator (Gloo or MPI) whatever they say.
void check_onebit_params(ObjectReader& params, const O& o) {
  const std::string& backend = o.comm_backend_name;
  if (backend != "nccl" && backend != "mpi" && backend != "gloo" && backend != "hccl" && backend != "compressed")
    params.ctx().fail(params.path_of("comm_backend_name"),
                      str("unknown backend ", quote(backend), "; DeepSpeed's are \"nccl\", \"mpi\", \"hccl\" and "
                          "\"compressed\" (here the job's communicator, gloo or mpi, carries the compressed all-reduce)"));
  if (params.has("comm_backend_name") && backend != "mpi" && backend != "gloo")
    params.ctx().warn(params.path_of("comm_backend_name"),
                      str(quote(backend), " is a GPU backend; the compressed all-reduce runs on this job's "
                          "communicator (gloo or mpi) instead"));
  if (o.cuda_aware) params.ctx().warn(params.path_of("cuda_aware"), "ignored: there is no GPU memory to send from");
  if (o.eps_inside_sqrt)
    params.ctx().warn(params.path_of("eps_inside_sqrt"),
                      "ignored, as by DeepSpeed's 1-bit optimizers: eps is added outside the square root");
}

void read_optimizer(ObjectReader& root, Config& c) {
  const Json* v = root.find("optimizer");
  if (!v || v->is_null()) return;
  ObjectReader in = root.child("optimizer");
  OptimizerType type = parse_optimizer_type(in);
  c.optimizer = optimizer_defaults(type);
  ObjectReader params = in.child("params");
  if (params.has("max_grad_norm")) {
    in.ctx().fail(params.path_of("max_grad_norm"),
                  "not an optimizer parameter in DeepSpeed (it raises an error too); use the top-level "
                  "\"gradient_clipping\"");
  }
  optimizer_params_schema(type).read(params, c.optimizer);
  const bool lamb = type == OptimizerType::kLamb || type == OptimizerType::kOneBitLamb;
  if (type == OptimizerType::kOneBitAdam || type == OptimizerType::kZeroOneAdam || type == OptimizerType::kOneBitLamb)
    check_onebit_params(params, c.optimizer);
  if (type == OptimizerType::kZeroOneAdam && c.optimizer.bias_correction)
    params.ctx().fail(params.path_of("bias_correction"),
                      "0/1 Adam updates the variance at sparse steps and corrects no bias (DeepSpeed accepts the key "
                      "and ignores it); remove it or set it to false");
  if (type == OptimizerType::kOneBitLamb && c.optimizer.bias_correction)
    params.ctx().fail(params.path_of("bias_correction"),
                      "1-bit Lamb corrects no bias (DeepSpeed's OnebitLamb accepts the key and ignores it; its tutorial "
                      "sets it to false); remove it or set it to false");
  if (lamb && c.optimizer.eps <= 0)
    params.ctx().fail(params.path_of("eps"), "Lamb needs eps > 0: an element whose m and v are both 0 would divide 0 "
                                             "by 0 and turn its whole tensor's trust ratio and update into NaN");
  if (type == OptimizerType::kOneBitLamb && c.optimizer.factor_min > c.optimizer.factor_max)
    params.ctx().fail(params.path_of("factor_min"),
                      str("factor_min ", format_number(c.optimizer.factor_min), " is above factor_max ",
                          format_number(c.optimizer.factor_max), ": the compressed phase's factor is clamped to "
                          "[factor_min, factor_max]"));
  if (type == OptimizerType::kOneBitLamb && c.optimizer.coeff_beta >= 1)
    params.ctx().fail(params.path_of("coeff_beta"), "must be < 1: the trust ratio's running average would stay at its "
                                                    "initial 0 and the compressed phase would not move the weights");
  if (type == OptimizerType::kOneBitLamb && c.optimizer.factor_min <= 0)
    params.ctx().fail(params.path_of("factor_min"), "must be > 0: a factor of 0 stops every weight for good (the next "
                                                    "step's factor may move only factor_threshold away from it)");
  if (lamb && c.optimizer.min_coeff > c.optimizer.max_coeff)
    params.ctx().fail(params.path_of("min_coeff"),
                      str("min_coeff ", format_number(c.optimizer.min_coeff), " is above max_coeff ",
                          format_number(c.optimizer.max_coeff), ": the trust ratio is clamped to [min_coeff, max_coeff]"));
  params.finish(str("unknown parameter for optimizer ", optimizer_type_name(type)));
  check_ignored(in, "legacy_fusion", false, "no fused fp16 optimizer here");
  in.finish();
}

void write_optimizer(const Config& c, Json& j) {
  if (c.optimizer.type == OptimizerType::kNone) return;
  j["optimizer"] = {{"type", optimizer_type_name(c.optimizer.type)},
                    {"params", optimizer_params_schema(c.optimizer.type).write(c.optimizer)}};
}

// ---- scheduler ----

SchedulerType parse_scheduler_type(ObjectReader& in) {
  std::vector<std::string> names;
  for (SchedulerType t : kSchedulerTypes) names.push_back(scheduler_type_name(t));
  std::string list;
  for (const auto& n : names) list += (list.empty() ? "" : ", ") + n;
  const Json* v = in.find("type");
  std::string path = in.path_of("type");
  if (!v) in.ctx().fail(path, str("required key is missing (one of ", list, ")"));
  if (!v->is_string()) in.ctx().fail(path, str("expected a scheduler name, got ", describe(*v)));
  const std::string& name = v->get_ref<const std::string&>();
  for (SchedulerType t : kSchedulerTypes)
    if (name == scheduler_type_name(t)) return t;  // DeepSpeed looks schedulers up by exact name
  if (std::find(kTorchSchedulers.begin(), kTorchSchedulers.end(), name) != kTorchSchedulers.end()) {
    in.ctx().fail(path, str("deepspeed.cpp does not support torch scheduler ", quote(name),
                            "; supported: DeepSpeed's ", list));
  }
  std::string guess = nearest(name, names);
  in.ctx().fail(path,
                str("unknown scheduler ", quote(name),
                    guess.empty() ? "" : str(" (did you mean ", quote(guess), "?)"), "; supported: ", list));
}

// WarmupLR's default is the optimizer's lr (filled in by check_cross_section's caller); WarmupDecayLR's is
// 0.001. "auto" means the optimizer's lr for both, as the Hugging Face integration sets it.
void read_warmup_max_lr(ObjectReader& in, S& s) {
  const Json* v = in.find("warmup_max_lr");
  if (!v) {
    if (s.type == SchedulerType::kWarmupDecayLR) s.warmup_max_lr = 1e-3;
  } else if (ObjectReader::is_auto(*v) || v->is_null()) {
    s.warmup_max_lr.reset();
  } else {
    read_value(*v, in.path_of("warmup_max_lr"), in.ctx(), at_least(0), s.warmup_max_lr);
  }
}

// Required by DeepSpeed; "auto" leaves it to the training program (written back as "auto").
void read_total_num_steps(ObjectReader& in, S& s) {
  const Json* v = in.find("total_num_steps");
  std::string path = in.path_of("total_num_steps");
  if (!v)
    in.ctx().fail(path, str("required key is missing for ", scheduler_type_name(s.type),
                            " (the number of training steps)"));
  if (ObjectReader::is_auto(*v)) {
    s.total_num_steps = 0;
    return;
  }
  read_value(*v, path, in.ctx(), at_least(1), s.total_num_steps);
}

Schema<S> build_scheduler_params(SchedulerType t) {
  const EnumNames<WarmupType> warmup_types = {{"log", WarmupType::kLog}, {"linear", WarmupType::kLinear}};
  bool warmup = t == SchedulerType::kWarmupLR || t == SchedulerType::kWarmupDecayLR;
  Schema<S> s;
  if (warmup) {
    s.field("warmup_min_lr", &S::warmup_min_lr, at_least(0))
        .custom(read_warmup_max_lr,
                [](const S& x, Json& j) { j["warmup_max_lr"] = write_value(x.warmup_max_lr); });
  }
  if (warmup || t == SchedulerType::kWarmupCosineLR) {
    s.field("warmup_num_steps", &S::warmup_num_steps, at_least(1))
        .choice("warmup_type", &S::warmup_type, warmup_types);
  }
  if (t == SchedulerType::kWarmupDecayLR || t == SchedulerType::kWarmupCosineLR) {
    s.custom(read_total_num_steps, [](const S& x, Json& j) {
      j["total_num_steps"] = x.total_num_steps > 0 ? Json(x.total_num_steps) : Json("auto");
    });
  }
  if (t == SchedulerType::kWarmupCosineLR) {
    s.field("warmup_min_ratio", &S::warmup_min_ratio, between(0, 1))
        .field("cos_min_ratio", &S::cos_min_ratio, between(0, 1));
  }
  if (t == SchedulerType::kOneCycle) {
    s.field("cycle_min_lr", &S::cycle_min_lr, required(at_least(0)))
        .field("cycle_max_lr", &S::cycle_max_lr, required(at_least(0)))
        .field("decay_lr_rate", &S::decay_lr_rate, at_least(0))
        .field("cycle_first_step_size", &S::cycle_first_step_size, at_least(1))
        .field("cycle_second_step_size", &S::cycle_second_step_size, at_least(1))
        .field("cycle_first_stair_count", &S::cycle_first_stair_count, at_least(0))
        .field("cycle_second_stair_count", &S::cycle_second_stair_count, at_least(0))
        .field("decay_step_size", &S::decay_step_size, at_least(0))
        .field("cycle_momentum", &S::cycle_momentum)
        .field("cycle_min_mom", &S::cycle_min_mom, between(0, 1))
        .field("cycle_max_mom", &S::cycle_max_mom, between(0, 1))
        .field("decay_mom_rate", &S::decay_mom_rate, at_least(0));
  }
  if (t == SchedulerType::kLRRangeTest) {
    s.field("lr_range_test_min_lr", &S::lr_range_test_min_lr, at_least(0))
        .field("lr_range_test_step_size", &S::lr_range_test_step_size, at_least(1))
        .field("lr_range_test_step_rate", &S::lr_range_test_step_rate, at_least(0))
        .field("lr_range_test_staircase", &S::lr_range_test_staircase);
  }
  s.field("last_batch_iteration", &S::last_batch_iteration, at_least(-1));
  return s;
}

const Schema<S>& scheduler_params_schema(SchedulerType t) {
  static const std::vector<Schema<S>> schemas = [] {
    std::vector<Schema<S>> v;
    for (int i = 0; i <= static_cast<int>(SchedulerType::kLRRangeTest); ++i)
      v.push_back(build_scheduler_params(static_cast<SchedulerType>(i)));
    return v;
  }();
  return schemas[static_cast<size_t>(t)];
}

void read_scheduler(ObjectReader& root, Config& c) {
  const Json* v = root.find("scheduler");
  if (!v || v->is_null()) return;
  ObjectReader in = root.child("scheduler");
  c.scheduler = SchedulerConfig();
  c.scheduler.type = parse_scheduler_type(in);
  ObjectReader params = in.child("params");
  scheduler_params_schema(c.scheduler.type).read(params, c.scheduler);
  params.finish(str("unknown parameter for scheduler ", scheduler_type_name(c.scheduler.type)));
  in.finish();
}

void write_scheduler(const Config& c, Json& j) {
  if (c.scheduler.type == SchedulerType::kNone) return;
  j["scheduler"] = {{"type", scheduler_type_name(c.scheduler.type)},
                    {"params", scheduler_params_schema(c.scheduler.type).write(c.scheduler)}};
}

}  // namespace

void add_optimizer_sections(Schema<Config>& root) {
  root.custom(read_optimizer, write_optimizer).custom(read_scheduler, write_scheduler);
}

}  // namespace ds::config_detail
