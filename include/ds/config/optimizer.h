// The `optimizer` and `scheduler` sections of a ds_config.json, as typed structs.
//
// One flat struct per section: every parameter any supported type takes, with the
// defaults of DeepSpeed's code for the chosen type (see optimizer_defaults()). The
// parser accepts only the parameters of the chosen type, so a field that does not
// belong to the type keeps its default and can be ignored by the consumer.
//
//   const ds::OptimizerConfig& o = config.optimizer;
//   if (o.type == ds::OptimizerType::kAdam) make_adam(o.lr, o.betas, o.eps, o.weight_decay,
//                                                     o.decoupled_weight_decay());
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>

namespace ds {

// Optimizers deepspeed.cpp implements. kNone: no "optimizer" section (the program brings its own).
// Rejected with a clear error: MuAdam, MuAdamW, MuSGD, Muon and other torch.optim names.
enum class OptimizerType { kNone, kAdam, kAdamW, kSGD, kAdagrad, kLion, kOneBitAdam, kZeroOneAdam, kLamb, kOneBitLamb };

// DeepSpeed's spelling of the type ("Adam", "AdamW", "SGD", "Adagrad", "Lion", "OneBitAdam", "ZeroOneAdam",
// "Lamb", "OneBitLamb"; "" for kNone).
const char* optimizer_type_name(OptimizerType type);

struct OptimizerConfig {
  OptimizerType type = OptimizerType::kNone;

  // Every type.
  double lr = 1e-3;
  double weight_decay = 0.0;
  // Adam, AdamW, Lion, OneBitAdam, Lamb, OneBitLamb.
  std::array<double, 2> betas{0.9, 0.999};
  // Adam, AdamW, Adagrad, OneBitAdam, Lamb, OneBitLamb.
  double eps = 1e-8;
  // Adam, AdamW, OneBitAdam, Lamb; ZeroOneAdam and OneBitLamb (default false there: DeepSpeed's
  // 0/1 Adam and OnebitLamb accept the key and never correct).
  bool bias_correction = true;
  // Adam, AdamW: torch_adam selects torch.optim's implementation in DeepSpeed; adam_w_mode
  // (default true!) makes type "Adam" apply decoupled weight decay, as DeepSpeed's code does.
  bool torch_adam = false;
  bool adam_w_mode = true;
  // SGD (torch.optim.SGD).
  double momentum = 0.0;
  double dampening = 0.0;
  bool nesterov = false;
  // Adagrad.
  double lr_decay = 0.0;
  double initial_accumulator_value = 0.0;
  // OneBitAdam, OneBitLamb: plain Adam (Lamb) for freeze_step steps, then compressed momentum.
  int64_t freeze_step = 100000;
  bool eps_inside_sqrt = false;
  bool cuda_aware = false;
  std::string comm_backend_name = "nccl";
  // ZeroOneAdam (0/1 Adam): the variance is updated at exponentially spaced steps (the interval
  // doubles every var_update_scaler updates) until var_freeze_step; then local steps, synced
  // every local_step_interval steps (doubling every local_step_scaler steps, at most
  // local_step_clipper). It also takes eps_inside_sqrt, cuda_aware and comm_backend_name.
  int64_t var_freeze_step = 100000;
  int64_t var_update_scaler = 16;
  int64_t local_step_scaler = 32678;
  int64_t local_step_clipper = 16;
  // Lamb (DeepSpeed's FusedLamb): each parameter tensor's step is scaled by its trust ratio
  // ||w|| / ||update||, clamped to [min_coeff, max_coeff]. It also takes eps_inside_sqrt
  // (honoured: eps added to v before the square root).
  double max_coeff = 10.0;
  double min_coeff = 0.01;
  // OneBitLamb (also max_coeff, min_coeff, freeze_step and OneBitAdam's backend keys): during
  // the warm-up each tensor's trust ratio is averaged with weight 1 - coeff_beta; in the
  // compressed phase that average is scaled by a factor tracking how far the frozen variance
  // is from a fresh one, clamped to [factor_min, factor_max] and to +-factor_threshold of the
  // previous step's factor.
  double coeff_beta = 0.9;
  double factor_max = 4.0;
  double factor_min = 0.5;
  double factor_threshold = 0.1;

  // AdamW-style (decoupled) weight decay: type AdamW, or type Adam with adam_w_mode (DeepSpeed's rule).
  bool decoupled_weight_decay() const {
    return type == OptimizerType::kAdamW || (type == OptimizerType::kAdam && adam_w_mode);
  }
};

// The defaults DeepSpeed's code uses for `type` (FusedAdam/CPUAdam, torch SGD, CPUAdagrad, FusedLion,
// OnebitAdam, FusedLamb, OnebitLamb).
OptimizerConfig optimizer_defaults(OptimizerType type);

// DeepSpeed's own LR schedules (deepspeed/runtime/lr_schedules.py). kNone: no "scheduler" section.
enum class SchedulerType { kNone, kWarmupLR, kWarmupDecayLR, kWarmupCosineLR, kOneCycle, kLRRangeTest };
const char* scheduler_type_name(SchedulerType type);

enum class WarmupType { kLog, kLinear };

struct SchedulerConfig {
  SchedulerType type = SchedulerType::kNone;

  // WarmupLR, WarmupDecayLR. warmup_max_lr: WarmupLR's default is the optimizer's lr (filled in when the
  // config has an optimizer, else left empty for the program); WarmupDecayLR's default is 0.001.
  double warmup_min_lr = 0.0;
  std::optional<double> warmup_max_lr;
  // WarmupLR, WarmupDecayLR, WarmupCosineLR.
  int64_t warmup_num_steps = 1000;
  WarmupType warmup_type = WarmupType::kLog;
  // WarmupDecayLR, WarmupCosineLR: required. 0 means "auto": the training program supplies it
  // (ResolveOptions::total_num_steps).
  int64_t total_num_steps = 0;
  // WarmupCosineLR.
  double warmup_min_ratio = 0.0;
  double cos_min_ratio = 1e-4;
  // OneCycle (cycle_min_lr and cycle_max_lr are required).
  double cycle_min_lr = 0.0;
  double cycle_max_lr = 0.0;
  double decay_lr_rate = 0.0;
  int64_t cycle_first_step_size = 2000;
  std::optional<int64_t> cycle_second_step_size;  // empty: cycle_first_step_size
  int64_t cycle_first_stair_count = 0;
  std::optional<int64_t> cycle_second_stair_count;  // empty: cycle_first_stair_count
  int64_t decay_step_size = 0;
  bool cycle_momentum = true;
  double cycle_min_mom = 0.8;
  double cycle_max_mom = 0.9;
  double decay_mom_rate = 0.0;
  // LRRangeTest.
  double lr_range_test_min_lr = 1e-3;
  int64_t lr_range_test_step_size = 2000;
  double lr_range_test_step_rate = 1.0;
  bool lr_range_test_staircase = false;
  // Every type: index of the last batch when resuming (-1: start).
  int64_t last_batch_iteration = -1;
};

}  // namespace ds
