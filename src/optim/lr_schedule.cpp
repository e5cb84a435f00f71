#include "ds/optim/lr_schedule.h"

#include <algorithm>
#include <cmath>

#include "ds/common/error.h"

namespace ds::optim {

namespace {
void require(bool ok, const std::string& what) {
  if (!ok) throw ConfigError("scheduler.params: " + what);
}
}  // namespace

LrSchedule LrSchedule::constant(double lr) {
  LrSchedule s;
  s.base_lr_ = lr;
  return s;
}

LrSchedule LrSchedule::from_config(const SchedulerConfig& c, double base_lr) {
  LrSchedule s;
  s.c_ = c;
  s.base_lr_ = base_lr;
  switch (c.type) {
    case SchedulerType::kNone: break;
    case SchedulerType::kWarmupLR:
    case SchedulerType::kWarmupDecayLR:
    case SchedulerType::kWarmupCosineLR:
      require(c.warmup_num_steps >= 0, str("warmup_num_steps must be >= 0, got ", c.warmup_num_steps));
      s.c_.warmup_num_steps = std::max<int64_t>(2, c.warmup_num_steps);  // as DeepSpeed: log(1) = 0
      if (c.type == SchedulerType::kWarmupLR && !c.warmup_max_lr) s.c_.warmup_max_lr = base_lr;
      if (c.type != SchedulerType::kWarmupLR)
        require(c.total_num_steps > 0, str(scheduler_type_name(c.type), " needs total_num_steps > 0, got ",
                                           c.total_num_steps, " (\"auto\" needs the program to give the step count)"));
      if (c.type == SchedulerType::kWarmupDecayLR && !c.warmup_max_lr) s.c_.warmup_max_lr = 0.001;
      if (c.type == SchedulerType::kWarmupCosineLR)
        require(c.total_num_steps > s.c_.warmup_num_steps, str("WarmupCosineLR needs total_num_steps (", c.total_num_steps,
                                                               ") > warmup_num_steps (", s.c_.warmup_num_steps, ")"));
      break;
    case SchedulerType::kOneCycle:
      require(c.cycle_first_step_size > 0, str("cycle_first_step_size must be > 0, got ", c.cycle_first_step_size));
      require(c.cycle_second_step_size.value_or(1) > 0, "cycle_second_step_size must be > 0");
      break;
    case SchedulerType::kLRRangeTest:
      require(c.lr_range_test_step_size > 0, str("lr_range_test_step_size must be > 0, got ", c.lr_range_test_step_size));
      break;
  }
  return s;
}

std::string LrSchedule::name() const { return c_.type == SchedulerType::kNone ? "constant" : scheduler_type_name(c_.type); }

namespace {
double warmup_gamma(int64_t it, int64_t warmup_steps, WarmupType type) {
  if (type == WarmupType::kLog) return std::log(double(it + 1)) / std::log(double(warmup_steps));
  return double(it) / double(warmup_steps);
}
}  // namespace

double LrSchedule::cycle_length() const {
  return double(c_.cycle_first_step_size + c_.cycle_second_step_size.value_or(c_.cycle_first_step_size));
}

double LrSchedule::one_cycle_scale(int64_t it) const {
  double total = cycle_length(), ratio = double(c_.cycle_first_step_size) / total;
  double batch = double(it + 1);
  double cycle = std::floor(1.0 + batch / total);
  double x = 1.0 + batch / total - cycle;
  return x <= ratio ? x / ratio : (x - 1.0) / (ratio - 1.0);
}

double LrSchedule::lr(int64_t it) const {
  const auto& c = c_;
  switch (c.type) {
    case SchedulerType::kNone: return base_lr_;
    case SchedulerType::kWarmupLR:
    case SchedulerType::kWarmupDecayLR: {
      const double min_lr = c.warmup_min_lr, max_lr = *c.warmup_max_lr;
      if (it < 0) return min_lr;
      double gamma;
      if (it < c.warmup_num_steps) gamma = warmup_gamma(it, c.warmup_num_steps, c.warmup_type);
      else if (c.type == SchedulerType::kWarmupLR) gamma = 1.0;
      else
        gamma = std::max(0.0, double(c.total_num_steps - it) / std::max(1.0, double(c.total_num_steps - c.warmup_num_steps)));
      return min_lr + (max_lr - min_lr) * gamma;
    }
    case SchedulerType::kWarmupCosineLR: {
      if (it < 0) return 0.0;
      double ratio;
      if (it < c.warmup_num_steps) {
        ratio = c.warmup_min_ratio + warmup_gamma(it, c.warmup_num_steps, c.warmup_type) * (1.0 - c.warmup_min_ratio);
      } else {
        double real_step = double(it - c.warmup_num_steps + 1);
        double real_total = double(c.total_num_steps - c.warmup_num_steps);
        double cosine = (1.0 + std::cos(M_PI * real_step / real_total)) / 2.0;
        ratio = std::max(0.0, c.cos_min_ratio + (1.0 - c.cos_min_ratio) * cosine);
      }
      return base_lr_ * ratio;
    }
    case SchedulerType::kOneCycle: {
      if (double(it) < cycle_length()) return c.cycle_min_lr + (c.cycle_max_lr - c.cycle_min_lr) * one_cycle_scale(it);
      if (c.decay_step_size == 0 || c.decay_lr_rate == 0.0) return c.cycle_min_lr;
      double interval = (double(it) - cycle_length() + 1.0) / double(c.decay_step_size);
      return c.cycle_min_lr / (1.0 + c.decay_lr_rate * interval);
    }
    case SchedulerType::kLRRangeTest: {
      double interval = double(it + 1) / double(c.lr_range_test_step_size);
      if (c.lr_range_test_staircase) interval = std::floor(interval);
      return c.lr_range_test_min_lr * (1.0 + c.lr_range_test_step_rate * interval);
    }
  }
  return base_lr_;
}

std::optional<double> LrSchedule::momentum(int64_t it) const {
  const auto& c = c_;
  if (c.type != SchedulerType::kOneCycle || !c.cycle_momentum) return std::nullopt;
  if (double(it) < cycle_length()) return c.cycle_max_mom - (c.cycle_max_mom - c.cycle_min_mom) * one_cycle_scale(it);
  if (c.decay_step_size == 0 || c.decay_mom_rate == 0.0) return c.cycle_max_mom;
  double interval = (double(it) - cycle_length() + 1.0) / double(c.decay_step_size);
  return c.cycle_max_mom * (1.0 + c.decay_mom_rate * interval);
}

}  // namespace ds::optim
