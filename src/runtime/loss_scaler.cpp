#include "ds/runtime/loss_scaler.h"

#include <algorithm>
#include <cmath>

#include "ds/common/error.h"

namespace ds {

LossScaler LossScaler::none() { return LossScaler(); }

LossScaler LossScaler::from_config(const Fp16Config& o) {
  if (o.loss_scale < 0) throw ConfigError(str("fp16.loss_scale must be >= 0, got ", o.loss_scale));
  if (o.min_loss_scale <= 0) throw ConfigError(str("fp16.min_loss_scale must be > 0, got ", o.min_loss_scale));
  if (o.hysteresis < 1) throw ConfigError(str("fp16.hysteresis must be >= 1, got ", o.hysteresis));
  if (o.loss_scale_window < 1) throw ConfigError(str("fp16.loss_scale_window must be >= 1, got ", o.loss_scale_window));
  LossScaler s;
  s.enabled_ = true;
  s.options_ = o;
  s.dynamic_ = o.loss_scale == 0.0;
  s.scale_ = s.dynamic_ ? o.initial_dynamic_scale() : o.loss_scale;
  s.hysteresis_left_ = static_cast<int>(o.hysteresis);
  return s;
}

bool LossScaler::update(bool overflow) {
  if (!enabled_) return false;
  if (!dynamic_) {
    ++iteration_;
    return overflow;
  }
  if (overflow) {
    if (options_.hysteresis == 1 || hysteresis_left_ == 1) {
      if (scale_ <= double(options_.min_loss_scale))
        throw Error(str("fp16 loss scale is already at its minimum (", options_.min_loss_scale,
                        ") and gradients still overflow; the model diverged: lower the learning rate, "
                        "use bf16, or lower fp16.min_loss_scale"));
      scale_ = std::max(scale_ / 2.0, double(options_.min_loss_scale));
    } else {
      --hysteresis_left_;
    }
    last_overflow_iteration_ = iteration_;
  } else {
    if (options_.consecutive_hysteresis) hysteresis_left_ = static_cast<int>(options_.hysteresis);
    if ((iteration_ - last_overflow_iteration_) % options_.loss_scale_window == 0) {
      if (!options_.consecutive_hysteresis) hysteresis_left_ = static_cast<int>(options_.hysteresis);
      scale_ *= 2.0;
    }
  }
  ++iteration_;
  return overflow;
}

LossScaler::State LossScaler::state() const { return {scale_, hysteresis_left_, iteration_, last_overflow_iteration_}; }

void LossScaler::load(const State& s) {
  scale_ = s.scale;
  hysteresis_left_ = s.hysteresis_left;
  iteration_ = s.iteration;
  last_overflow_iteration_ = s.last_overflow_iteration;
}

}  // namespace ds
