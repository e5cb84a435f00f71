// Data parallelism is exact: the same model, data and seed give the same losses and final
// weights (1e-5, fp32, 20 steps) for 1 process x batch 8, 2 ranks x micro 4, 1 process x
// micro 4 x accumulation 2, and 4 ranks x micro 2, with clipping and every scheduler.
//
// One exception, and why: the attention key bias has a true gradient of exactly 0 (softmax
// is shift-invariant), so it receives rounding noise (~1e-9) that differs with summation
// order, and Adam's m / (sqrt(v) + eps) turns noise into +-lr steps. With AdamW the key
// biases are left out of the weight comparison; with SGD + momentum (no such amplification)
// every weight is compared.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "ds/common/error.h"
#include "support/ranks.h"
#include "train_util.h"

using namespace ds;

namespace {

// eps 1e-6 (DeepSpeed: 1e-8): gradients that are ~0 up to rounding (e.g. the rows of tokens the
// task never uses) would otherwise take noise-driven +-lr steps that differ between layouts.
const char* kAdamW = R"({"type": "AdamW", "params": {"lr": 0.01, "weight_decay": 0.01, "eps": 1e-6}})";
const char* kSgd = R"({"type": "SGD", "params": {"lr": 0.05, "momentum": 0.9}})";

// AdamW runs clip at 0.5 (clipping on every step); SGD runs do not clip, because clipping and
// Adam are both blind to the scale of the gradient and would hide a sum-instead-of-mean bug.
std::string config(const std::string& batch, const std::string& scheduler, const std::string& extra = "",
                   const std::string& optimizer = kAdamW) {
  std::string clip = optimizer == kAdamW ? "0.5" : "0.0";
  return "{" + batch + ", \"optimizer\": " + optimizer + ", \"gradient_clipping\": " + clip +
         (scheduler.empty() ? "" : ", \"scheduler\": " + scheduler) + extra + "}";
}

const char* kBatch8 = R"("train_batch_size": 8, "gradient_accumulation_steps": 1)";
const char* kMicro4 = R"("train_batch_size": 8, "train_micro_batch_size_per_gpu": 4)";
const char* kMicro2 = R"("train_batch_size": 8, "train_micro_batch_size_per_gpu": 2)";

struct Layout {
  const char* name;
  int world;
  const char* batch;
};

class Equivalence : public ::testing::TestWithParam<std::string> {};

std::string scheduler_name(const ::testing::TestParamInfo<std::string>& info) {
  static const char* names[] = {"Constant", "WarmupLR", "WarmupDecayLR", "WarmupCosineLR", "OneCycle", "LRRangeTest"};
  return names[info.index];
}

}  // namespace

TEST_P(Equivalence, LayoutsMatchOneProcessWithinTolerance) {
  const std::string scheduler = GetParam() == "none" ? "" : GetParam();
  const int steps = 20;
  const double tol = 1e-5;
  for (Layout layout : {Layout{"2 ranks x micro 4", 2, kMicro4}, Layout{"1 process x micro 4 x accumulation 2", 1, kMicro4},
                        Layout{"4 ranks x micro 2", 4, kMicro2}}) {
    test::run_ranks(layout.world, [&](comm::Communicator& c) {
      for (const char* optimizer : {kAdamW, kSgd}) {
        auto baseline = test::train_tiny(test::solo(), config(kBatch8, scheduler, "", optimizer), steps);
        auto run = test::train_tiny(c.shared_from_this(), config(layout.batch, scheduler, "", optimizer), steps);
        at::Tensor diff = (run.weights - baseline.weights).abs();
        if (optimizer == kAdamW) diff.masked_fill_(baseline.key_bias, 0.0);
        EXPECT_LT(test::max_abs_diff(run.losses, baseline.losses), tol) << layout.name << " " << optimizer;
        EXPECT_LT(diff.max().item<double>(), tol) << layout.name << " " << optimizer << " at " << diff.argmax().item<int64_t>();
        EXPECT_LT(baseline.losses.back(), baseline.losses.front()) << "the tiny model did not learn";
      }
    });
  }
}

INSTANTIATE_TEST_SUITE_P(
    Schedulers, Equivalence,
    ::testing::Values("none",
                      R"({"type": "WarmupLR", "params": {"warmup_max_lr": 0.01, "warmup_num_steps": 5}})",
                      R"({"type": "WarmupDecayLR", "params": {"warmup_max_lr": 0.01, "warmup_num_steps": 5, "total_num_steps": 20}})",
                      R"({"type": "WarmupCosineLR", "params": {"warmup_num_steps": 5, "total_num_steps": 20}})",
                      R"({"type": "OneCycle", "params": {"cycle_min_lr": 0.001, "cycle_max_lr": 0.01, "cycle_first_step_size": 5}})",
                      R"({"type": "LRRangeTest", "params": {"lr_range_test_min_lr": 0.001, "lr_range_test_step_size": 5}})"),
    scheduler_name);

TEST(MixedPrecision, Bf16AndFp16TrackFp32) {
  // Half precision rounds the weights (bf16 keeps 8 significant bits: a relative error up to
  // 2^-9 per weight; fp16 11 bits: 2^-12) and the gradients on the wire, so the curves drift
  // apart slowly. Measured over 20 steps (loss 5.53 -> 3.33): bf16 0.0013, fp16 0.00028 at
  // most; the bounds are ~8x that, and the fp16/bf16 ratio follows the mantissa widths.
  test::run_ranks(2, [](comm::Communicator& c) {
    auto fp32 = test::train_tiny(c.shared_from_this(), config(kMicro4, ""), 20);
    auto bf16 = test::train_tiny(c.shared_from_this(), config(kMicro4, "", R"(, "bf16": {"enabled": true})"), 20);
    auto fp16 = test::train_tiny(c.shared_from_this(), config(kMicro4, "", R"(, "fp16": {"enabled": true, "initial_scale_power": 8})"), 20);
    if (c.rank() == 0)
      std::printf("max |loss - fp32 loss| over 20 steps: bf16 %.4g, fp16 %.4g (fp32 loss %.3f -> %.3f)\n",
                  test::max_abs_diff(bf16.losses, fp32.losses), test::max_abs_diff(fp16.losses, fp32.losses),
                  fp32.losses.front(), fp32.losses.back());
    EXPECT_LT(test::max_abs_diff(bf16.losses, fp32.losses), 0.01);
    EXPECT_LT(test::max_abs_diff(fp16.losses, fp32.losses), 0.002);
    EXPECT_GT(test::max_abs_diff(bf16.losses, fp32.losses), 0.0) << "bf16 run identical to fp32: not rounding?";
    for (bool s : fp16.skipped) EXPECT_FALSE(s);
    // The model computes with bf16 values: every weight it holds is exactly bf16-representable.
    EXPECT_EQ((bf16.weights - bf16.weights.to(at::kBFloat16).to(at::kFloat)).abs().max().item<double>(), 0.0);
    EXPECT_GT((fp32.weights - fp32.weights.to(at::kBFloat16).to(at::kFloat)).abs().max().item<double>(), 0.0);
  });
}

TEST(MixedPrecision, InfGradientSkipsTheStepAndLowersTheScale) {
  test::run_ranks(2, [](comm::Communicator& c) {
    const std::string cfg = config(kMicro4, "", R"(, "fp16": {"enabled": true, "initial_scale_power": 8, "hysteresis": 2})");
    // Rank 1 alone gets an inf gradient at steps 3 and 4 (a tensor hook, i.e. during backward,
    // as a real overflow): every rank must skip both (the all-reduce spreads the inf); the
    // first costs hysteresis, the second halves the scale.
    at::Tensor hooked;
    unsigned hook = 0;
    auto r = test::train_tiny(c.shared_from_this(), cfg, 8, [&](Engine& e, int step) {
      if (hooked.defined()) hooked.remove_hook(hook), hooked = at::Tensor();
      if (c.rank() == 1 && (step == 3 || step == 4)) {
        hooked = e.unit(2).tensors()[0];
        hook = hooked.register_hook([](at::Tensor g) {
          g = g.clone();
          g.view(-1)[0] = INFINITY;
          return g;
        });
      }
    });
    auto clean = test::train_tiny(c.shared_from_this(), cfg, 3);
    for (int s = 0; s < 8; ++s) EXPECT_EQ(bool(r.skipped[s]), s == 3 || s == 4) << "step " << s;
    EXPECT_EQ(r.scales[3], 256.0);
    EXPECT_EQ(r.scales[4], 256.0);   // hysteresis absorbed the first overflow
    EXPECT_EQ(r.scales[5], 128.0);   // the second halved the scale
    EXPECT_EQ(test::max_abs_diff({r.losses.begin(), r.losses.begin() + 3}, clean.losses), 0.0);
  });
}

TEST(EngineErrors, ConfigsTheEngineCannotHonourAreRejected) {
  auto c = test::solo();
  auto expect_error = [&](const std::string& json, const std::string& needle) {
    try {
      test::train_tiny(c, json, 1);
      ADD_FAILURE() << "accepted: " << json;
    } catch (const ConfigError& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  expect_error(config(kBatch8, "", R"(, "zero_optimization": {"stage": 3, "offload_param": {"device": "nvme", "nvme_path": "/tmp"}})"),
               "offload_param.device \"nvme\"");
  expect_error(R"({"train_batch_size": 8})", "optimizer");
  expect_error(config(kBatch8, R"({"type": "WarmupDecayLR", "params": {"total_num_steps": "auto"}})"), "total_num_steps");
}
