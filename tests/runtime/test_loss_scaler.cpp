// The fp16 loss scaler's state machine, step by step.
#include <gtest/gtest.h>

#include "ds/common/error.h"
#include "ds/runtime/loss_scaler.h"

namespace {
ds::Fp16Config fp16(int64_t window = 4, int64_t hysteresis = 2) {
  ds::Fp16Config c;
  c.enabled = true;
  c.initial_scale_power = 4;  // 16
  c.loss_scale_window = window;
  c.hysteresis = hysteresis;
  c.min_loss_scale = 2;
  return c;
}
}  // namespace

TEST(LossScaler, StartsAtTwoToTheInitialPower) {
  EXPECT_EQ(ds::LossScaler::from_config(fp16()).scale(), 16.0);
  EXPECT_EQ(ds::LossScaler::none().scale(), 1.0);
  EXPECT_FALSE(ds::LossScaler::none().update(true));  // fp32/bf16: never skips
}

TEST(LossScaler, HysteresisDelaysTheFirstDecrease) {
  auto s = ds::LossScaler::from_config(fp16(1000, 2));
  EXPECT_TRUE(s.update(true));   // skipped, hysteresis 2 -> 1, scale kept
  EXPECT_EQ(s.scale(), 16.0);
  EXPECT_TRUE(s.update(true));   // hysteresis exhausted: halve
  EXPECT_EQ(s.scale(), 8.0);
  EXPECT_TRUE(s.update(true));
  EXPECT_EQ(s.scale(), 4.0);
}

TEST(LossScaler, DoublesAfterAWindowOfCleanSteps) {
  auto s = ds::LossScaler::from_config(fp16(4, 1));
  EXPECT_TRUE(s.update(true));  // iteration 0 overflows: 16 -> 8
  EXPECT_EQ(s.scale(), 8.0);
  for (int i = 0; i < 3; ++i) EXPECT_FALSE(s.update(false));
  EXPECT_EQ(s.scale(), 8.0);
  EXPECT_FALSE(s.update(false));  // 4 clean steps since the overflow
  EXPECT_EQ(s.scale(), 16.0);
}

TEST(LossScaler, OverflowAtTheMinimumIsAClearError) {
  auto s = ds::LossScaler::from_config(fp16(1000, 1));
  s.update(true);  // 8
  s.update(true);  // 4
  s.update(true);  // 2 = minimum
  try {
    s.update(true);
    FAIL() << "no error at the minimum scale";
  } catch (const ds::Error& e) {
    EXPECT_NE(std::string(e.what()).find("minimum"), std::string::npos) << e.what();
  }
}

TEST(LossScaler, StaticScaleStillSkipsOverflowingSteps) {
  ds::Fp16Config c = fp16();
  c.loss_scale = 128;
  auto s = ds::LossScaler::from_config(c);
  EXPECT_FALSE(s.dynamic());
  EXPECT_TRUE(s.update(true));
  EXPECT_EQ(s.scale(), 128.0);
  EXPECT_FALSE(s.update(false));
}

TEST(LossScaler, StateRoundTrips) {
  auto s = ds::LossScaler::from_config(fp16(4, 2));
  s.update(true);
  s.update(false);
  auto t = ds::LossScaler::from_config(fp16(4, 2));
  t.load(s.state());
  EXPECT_EQ(t.scale(), s.scale());
  EXPECT_EQ(t.update(true), s.update(true));
  EXPECT_EQ(t.scale(), s.scale());
}
