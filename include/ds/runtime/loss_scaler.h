// fp16 loss scaling, as DeepSpeed's DynamicLossScaler does it.
//
// Dynamic: start at 2^initial_scale_power. A step whose gradients overflow (inf/nan) is
// skipped; while hysteresis remains it is counted down, else the scale halves (not below
// min_loss_scale; an overflow at the minimum is an error). After loss_scale_window steps
// without overflow the scale doubles. Static (loss_scale > 0): a fixed scale, overflowing
// steps are still skipped.
//
//   ds::LossScaler s = ds::LossScaler::from_config(config.fp16);
//   loss * s.scale() -> backward; bool skip = s.update(has_overflow);
#pragma once

#include <cstdint>

#include "ds/config/sections.h"

namespace ds {

class LossScaler {
 public:
  static LossScaler none();  // scale 1, never skips (fp32 / bf16)
  // Dynamic or static per fp16.loss_scale; throws ds::ConfigError for impossible settings.
  static LossScaler from_config(const Fp16Config& c);

  double scale() const { return scale_; }
  bool dynamic() const { return dynamic_; }
  bool enabled() const { return enabled_; }
  // Records one optimizer step's outcome; returns true when the step must be skipped.
  // Throws ds::Error when an overflow happens at the minimum scale.
  bool update(bool overflow);

  // For checkpoints.
  struct State {
    double scale = 1.0;
    int hysteresis_left = 0;
    int64_t iteration = 0;
    int64_t last_overflow_iteration = -1;
  };
  State state() const;
  void load(const State& s);

 private:
  bool enabled_ = false;
  bool dynamic_ = false;
  Fp16Config options_;
  double scale_ = 1.0;
  int hysteresis_left_ = 0;
  int64_t iteration_ = 0;
  int64_t last_overflow_iteration_ = -1;
};

}  // namespace ds
