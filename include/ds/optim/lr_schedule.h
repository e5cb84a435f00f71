// Learning-rate schedules with DeepSpeed's formulas (deepspeed/runtime/lr_schedules.py):
// WarmupLR, WarmupDecayLR, WarmupCosineLR, OneCycle, LRRangeTest. Pure functions of the
// iteration, so they are exact to test and to resume.
//
//   ds::optim::LrSchedule s = ds::optim::LrSchedule::from_config(config.scheduler, config.optimizer.lr);
//   double lr = s.lr(it);        // `it` is DeepSpeed's last_batch_iteration
//
// As in DeepSpeed, the engine steps the scheduler after the optimizer, so optimizer step k
// (k = 1, 2, ...) runs with lr(k - 2): the first step uses lr(-1) (the warm-up's start).
#pragma once

#include <optional>
#include <string>

#include "ds/config/optimizer.h"

namespace ds::optim {

class LrSchedule {
 public:
  // A constant lr (no `scheduler` section).
  static LrSchedule constant(double lr);
  // `base_lr` is the optimizer's lr: WarmupCosineLR scales it, WarmupLR defaults its max to it.
  // Throws ds::ConfigError for parameters the formulas cannot use (e.g. total_num_steps 0).
  static LrSchedule from_config(const SchedulerConfig& config, double base_lr);

  SchedulerType type() const { return c_.type; }
  std::string name() const;
  // The learning rate at DeepSpeed's last_batch_iteration `it` (>= -1).
  double lr(int64_t it) const;
  // OneCycle with cycle_momentum: Adam's beta1 (SGD's momentum) at `it`; otherwise nullopt.
  std::optional<double> momentum(int64_t it) const;

 private:
  double one_cycle_scale(int64_t it) const;
  double cycle_length() const;

  SchedulerConfig c_;
  double base_lr_ = 0.0;
};

}  // namespace ds::optim
