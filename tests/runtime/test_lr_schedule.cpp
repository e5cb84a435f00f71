// Each DeepSpeed schedule at several iterations, against values worked out by hand from
// deepspeed/runtime/lr_schedules.py's formulas.
#include <gtest/gtest.h>

#include <cmath>

#include "ds/common/error.h"
#include "ds/config/config.h"
#include "ds/optim/lr_schedule.h"

namespace {

ds::optim::LrSchedule schedule(const std::string& scheduler_json, double optimizer_lr = 0.1) {
  ds::Config c = ds::Config::parse(R"({"train_batch_size": 1, "optimizer": {"type": "AdamW", "params": {"lr": )" +
                                   std::to_string(optimizer_lr) + "}}, \"scheduler\": " + scheduler_json + "}");
  return ds::optim::LrSchedule::from_config(c.scheduler, c.optimizer.lr);
}

}  // namespace

TEST(LrSchedule, ConstantWithoutScheduler) {
  auto s = ds::optim::LrSchedule::constant(0.5);
  EXPECT_EQ(s.lr(-1), 0.5);
  EXPECT_EQ(s.lr(1000), 0.5);
  EXPECT_FALSE(s.momentum(3).has_value());
}

TEST(LrSchedule, WarmupLrLogRisesAsLogThenHolds) {
  auto s = schedule(R"({"type": "WarmupLR", "params": {"warmup_min_lr": 0, "warmup_max_lr": 0.01, "warmup_num_steps": 100}})");
  EXPECT_DOUBLE_EQ(s.lr(-1), 0.0);  // before the first scheduler step: the minimum
  EXPECT_DOUBLE_EQ(s.lr(0), 0.0);   // log(1) = 0
  EXPECT_NEAR(s.lr(9), 0.005, 1e-15);  // log(10) / log(100) = 1/2
  EXPECT_NEAR(s.lr(99), 0.01, 1e-15);
  EXPECT_DOUBLE_EQ(s.lr(150), 0.01);
}

TEST(LrSchedule, WarmupLrLinearAndDefaultMaxIsOptimizerLr) {
  auto s = schedule(R"({"type": "WarmupLR", "params": {"warmup_min_lr": 0.001, "warmup_num_steps": 10, "warmup_type": "linear"}})", 0.011);
  EXPECT_NEAR(s.lr(5), 0.001 + 0.010 * 0.5, 1e-15);
  EXPECT_NEAR(s.lr(10), 0.011, 1e-15);
}

TEST(LrSchedule, WarmupDecayLrDecaysLinearlyToZero) {
  auto s = schedule(R"({"type": "WarmupDecayLR", "params": {"warmup_max_lr": 0.01, "warmup_num_steps": 100, "total_num_steps": 200}})");
  EXPECT_NEAR(s.lr(9), 0.005, 1e-15);
  EXPECT_NEAR(s.lr(100), 0.01, 1e-15);        // (200-100)/(200-100)
  EXPECT_NEAR(s.lr(150), 0.005, 1e-15);       // (200-150)/100
  EXPECT_DOUBLE_EQ(s.lr(250), 0.0);           // clamped at 0
}

TEST(LrSchedule, WarmupCosineLrScalesTheOptimizerLr) {
  auto s = schedule(R"({"type": "WarmupCosineLR", "params": {"total_num_steps": 110, "warmup_num_steps": 10,
                       "warmup_type": "linear", "cos_min_ratio": 0.0}})", 0.1);
  EXPECT_DOUBLE_EQ(s.lr(-1), 0.0);
  EXPECT_NEAR(s.lr(5), 0.05, 1e-15);
  EXPECT_NEAR(s.lr(10), 0.1 * (1 + std::cos(M_PI * 1 / 100.0)) / 2, 1e-15);
  EXPECT_NEAR(s.lr(59), 0.05, 1e-12);  // halfway through the cosine
  EXPECT_NEAR(s.lr(109), 0.0, 1e-15);
}

TEST(LrSchedule, OneCycleRisesFallsThenDecays) {
  auto s = schedule(R"({"type": "OneCycle", "params": {"cycle_min_lr": 0.1, "cycle_max_lr": 1.0, "cycle_first_step_size": 10,
                       "decay_step_size": 10, "decay_lr_rate": 0.5, "cycle_min_mom": 0.8, "cycle_max_mom": 0.9}})");
  EXPECT_NEAR(s.lr(-1), 0.1, 1e-15);
  EXPECT_NEAR(s.lr(4), 0.55, 1e-15);   // batch 5 of 20: halfway up
  EXPECT_NEAR(s.lr(9), 1.0, 1e-15);    // the peak
  EXPECT_NEAR(s.lr(14), 0.55, 1e-15);  // halfway down
  EXPECT_NEAR(s.lr(29), 0.1 / 1.5, 1e-15);  // decay: interval (29-20+1)/10 = 1
  EXPECT_NEAR(*s.momentum(4), 0.85, 1e-15);  // momentum moves against the lr
  EXPECT_NEAR(*s.momentum(9), 0.8, 1e-15);
}

TEST(LrSchedule, LrRangeTestGrowsContinuouslyOrInStairs) {
  auto s = schedule(R"({"type": "LRRangeTest", "params": {"lr_range_test_min_lr": 0.001, "lr_range_test_step_size": 10}})");
  EXPECT_NEAR(s.lr(9), 0.002, 1e-15);
  EXPECT_NEAR(s.lr(4), 0.0015, 1e-15);
  auto stairs = schedule(R"({"type": "LRRangeTest", "params": {"lr_range_test_min_lr": 0.001, "lr_range_test_step_size": 10,
                            "lr_range_test_staircase": true}})");
  EXPECT_NEAR(stairs.lr(8), 0.001, 1e-15);
  EXPECT_NEAR(stairs.lr(9), 0.002, 1e-15);
}

TEST(LrSchedule, ImpossibleParametersAreConfigErrors) {
  ds::SchedulerConfig c;
  c.type = ds::SchedulerType::kWarmupDecayLR;
  c.total_num_steps = 0;
  try {
    ds::optim::LrSchedule::from_config(c, 0.1);
    FAIL();
  } catch (const ds::ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("total_num_steps"), std::string::npos) << e.what();
  }
}
