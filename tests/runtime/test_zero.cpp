// ZeRO stages 1, 2 and 3 are exact: on 1, 2, 3 and 4 ranks (shards that do not divide evenly
// at 3), with and without gradient accumulation, the losses and the consolidated weights match
// stage 0 on one process within 1e-5 (fp32, 20 steps) — with AdamW + clipping (key biases
// excepted, see test_engine.cpp) and with SGD without clipping (every weight). The bytes on
// the wire and the per-rank memory follow ZeRO's arithmetic.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "support/errors.h"
#include "support/ranks.h"
#include "train_util.h"

using namespace ds;

namespace {

// eps 1e-6 (DeepSpeed: 1e-8): gradients that are ~0 up to rounding (e.g. the rows of tokens the
// task never uses) would otherwise take noise-driven +-lr steps that differ between layouts.
const char* kAdamW = R"({"type": "AdamW", "params": {"lr": 0.01, "weight_decay": 0.01, "eps": 1e-6}})";
const char* kSgd = R"({"type": "SGD", "params": {"lr": 0.05, "momentum": 0.9}})";

// Stage 3 with the tiny model: no unit is small enough to stay whole (threshold 0), nothing is
// kept for reuse, and the next unit is prefetched — every unit is gathered and released twice
// per micro-batch.
const char* kStage3 = R"(, "stage3_param_persistence_threshold": 0, "stage3_max_reuse_distance": 0, "stage3_prefetch_bucket_size": 10000)";

std::string config(int stage, int64_t micro, int64_t gas, const char* optimizer, const std::string& extra = "") {
  return ds::str(R"({"train_batch_size": 12, "train_micro_batch_size_per_gpu": )", micro,
                 R"(, "gradient_accumulation_steps": )", gas, R"(, "optimizer": )", optimizer,
                 R"(, "gradient_clipping": )", optimizer == kAdamW ? "0.5" : "0.0",
                 R"(, "scheduler": {"type": "WarmupDecayLR", "params": {"warmup_max_lr": 0.01, "warmup_num_steps": 5, "total_num_steps": 20}})",
                 R"(, "zero_optimization": {"stage": )", stage, stage == 3 ? kStage3 : "", "}", extra, "}");
}

void expect_same(const test::TrainResult& run, const test::TrainResult& base, bool adam, const std::string& what) {
  at::Tensor diff = (run.weights - base.weights).abs();
  if (adam) diff.masked_fill_(base.key_bias, 0.0);
  EXPECT_LT(test::max_abs_diff(run.losses, base.losses), 1e-5) << what;
  EXPECT_LT(diff.max().item<double>(), 1e-5) << what;
}

}  // namespace

class ZeroStages : public ::testing::TestWithParam<int> {};

TEST_P(ZeroStages, MatchStageZeroOnOneProcess) {
  const int world = GetParam();
  test::run_ranks(world, [&](comm::Communicator& c) {
    for (const char* opt : {kAdamW, kSgd}) {
      auto base = test::train_tiny(test::solo(), config(0, 12, 1, opt), 20);
      for (int stage : {1, 2, 3}) {
        for (int64_t gas : {1, 2}) {
          if ((12 / world) % gas != 0) continue;
          const int64_t micro = 12 / world / gas;
          auto run = test::train_tiny(c.shared_from_this(), config(stage, micro, gas, opt), 20);
          expect_same(run, base, opt == kAdamW,
                      ds::str("stage ", stage, " world ", world, " micro ", micro, " accumulation ", gas, " ", opt));
        }
      }
    }
  });
}

INSTANTIATE_TEST_SUITE_P(Worlds, ZeroStages, ::testing::Values(1, 2, 3, 4),
                         [](const auto& info) { return "world" + std::to_string(info.param); });

TEST(ZeroStages, Bf16WithAccumulationMatchesStageZeroBf16) {
  test::run_ranks(2, [](comm::Communicator& c) {
    const std::string bf16 = R"(, "bf16": {"enabled": true})";
    auto base = test::train_tiny(c.shared_from_this(), config(0, 3, 2, kAdamW, bf16), 20);
    for (int stage : {1, 2, 3}) {
      auto run = test::train_tiny(c.shared_from_this(), config(stage, 3, 2, kAdamW, bf16), 20);
      double dl = test::max_abs_diff(run.losses, base.losses);
      if (c.rank() == 0) std::printf("bf16 stage %d vs stage 0: max loss diff %.3g\n", stage, dl);
      EXPECT_LT(dl, 1e-3) << "stage " << stage;
    }
  });
}

TEST(ZeroStages, TrafficPerStepIsExactlyTwoPsiForStagesZeroToTwo) {
  // fp32, 1 micro-batch per step, 4 ranks: stage 0 all-reduces every unit, stages 1-2
  // reduce-scatter and all-gather every unit; each rank sends exactly 2 (N-1)/N x the padded
  // parameter bytes per step (units are padded to 64 N elements, so every ring chunk is
  // equal). Besides, per step, one 8-byte all-reduce of the loss and, where each rank holds a
  // disjoint part of the gradient (stages 1-2), one of the squared norm.
  constexpr int kRanks = 4, kSteps = 2;
  test::run_ranks(kRanks, [](comm::Communicator& c) {
    for (int stage : {0, 1, 2}) {
      test::TinyRun run(c.shared_from_this(), config(stage, 3, 1, kSgd));
      c.logger().reset();
      c.logger().set_enabled(true);
      run.train_to(kSteps);
      c.logger().set_enabled(false);
      int64_t psi = 0;
      for (size_t u = 0; u < run.engine().unit_count(); ++u) psi += run.engine().unit(u).padded_numel();
      int64_t sent = 0, scalar_calls = 0;
      for (const auto& [key, s] : c.logger().by_size()) {
        if (key.second <= 8) {
          EXPECT_EQ(key, std::make_pair(std::string("all_reduce"), int64_t(8))) << "stage " << stage;
          scalar_calls += s.calls;
        } else {
          sent += s.sent_bytes;
          const std::string expected_op = stage == 0 ? "all_reduce" : "all_gather";
          if (key.first != "reduce_scatter") {
            EXPECT_EQ(key.first, expected_op) << "stage " << stage;
          }
        }
      }
      EXPECT_EQ(sent, int64_t(kSteps) * 2 * (kRanks - 1) * 4 * psi / kRanks) << "stage " << stage;
      EXPECT_EQ(scalar_calls, kSteps * (stage == 0 ? 1 : 2)) << "stage " << stage;
      if (c.rank() == 0) std::printf("stage %d: %lld bytes sent per rank per step\n", stage, (long long)(sent / kSteps));
    }
  });
}

TEST(ZeroStages, MemoryShrinksWithTheNumberOfRanks) {
  test::run_ranks(4, [](comm::Communicator& c) {
    // Taken just before backward, i.e. what a rank holds between steps.
    auto breakdown = [&](int stage) {
      Engine::MemoryBreakdown m;
      test::train_tiny(c.shared_from_this(), config(stage, 3, 1, kAdamW), 1,
                       [&](Engine& engine, int) { m = engine.memory_breakdown(); });
      return m;
    };
    auto s0 = breakdown(0), s1 = breakdown(1), s2 = breakdown(2);
    // Adam's two states are sharded at stages 1-2: a quarter of stage 0's on 4 ranks.
    EXPECT_EQ(s1.optimizer_state * 4, s0.optimizer_state);
    EXPECT_EQ(s2.optimizer_state * 4, s0.optimizer_state);
    // Stage 2 keeps only the gradient shard between steps; stage 1 the full gradient too.
    EXPECT_EQ(s2.grads * 4, s0.grads);
    EXPECT_EQ(s1.grads, s0.grads + s0.grads / 4);
    EXPECT_EQ(s0.params, s2.params);
  });
}


TEST(ZeroStages, EveryOptimizerTrainsShardedLikeOneProcess) {
  // The CPU kernels (Adagrad, Lion, Adam without torch_adam) and torch.optim's Adam arithmetic
  // (torch_adam) on ZeRO-2 shards over 2 ranks, against one process at stage 0.
  test::run_ranks(2, [](comm::Communicator& c) {
    for (const char* opt : {R"({"type": "Adagrad", "params": {"lr": 0.05}})", R"({"type": "Lion", "params": {"lr": 0.001}})",
                            R"({"type": "Adam", "params": {"lr": 0.01, "torch_adam": true, "adam_w_mode": false}})",
                            R"({"type": "Adam", "params": {"lr": 0.01, "weight_decay": 0.1, "adam_w_mode": false}})"}) {
      auto base = test::train_tiny(test::solo(), config(0, 12, 1, opt), 10);
      auto run = test::train_tiny(c.shared_from_this(), config(2, 6, 1, opt), 10);
      EXPECT_LT(test::max_abs_diff(run.losses, base.losses), 1e-5) << opt;
      EXPECT_LT(base.losses.back(), base.losses.front()) << opt << " did not learn";
    }
  });
}

TEST(ZeroStages, OffloadSettingsAreAcceptedOrRefusedClearly) {
  const std::string cpu = R"(, "zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}})";
  auto cfg = [](const std::string& zero) {
    return R"({"train_batch_size": 12, "optimizer": {"type": "AdamW", "params": {"lr": 0.01}})" + zero + "}";
  };
  auto r = test::train_tiny(test::solo(), cfg(cpu), 2);  // the CPU kernels on the shards
  EXPECT_EQ(r.losses.size(), 2u);
  EXPECT_ERROR_HAS(test::train_tiny(test::solo(), cfg(R"(, "zero_optimization": {"stage": 0, "offload_optimizer": {"device": "cpu"}})"), 1),
                   "needs ZeRO stage 1, 2 or 3");
  EXPECT_ERROR_HAS(test::train_tiny(test::solo(), cfg(R"(, "zero_optimization": {"stage": 3, "offload_param": {"device": "nvme", "nvme_path": "/tmp"}})"), 1),
                   "offload_param.device \"nvme\"");
}
