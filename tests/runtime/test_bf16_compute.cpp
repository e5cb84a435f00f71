// bf16 compute (EngineOptions::compute_dtype = bf16): the units hold bf16 weights and
// gradients, the GEMMs run in bf16, LayerNorm statistics, softmax, the loss and the gradient
// norm accumulate in fp32, masters and optimizer states stay fp32. It runs on every CPU (on
// CPUs without native bf16 LibTorch emulates it, slowly): these tests check the arithmetic,
// not the speed, so they run everywhere.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "ds/common/cpu.h"
#include "support/errors.h"
#include "support/files.h"
#include "support/ranks.h"
#include "train_util.h"

using namespace ds;

namespace {

const char* kSgd = R"({"type": "SGD", "params": {"lr": 0.05}})";
const char* kAdamW = R"({"type": "AdamW", "params": {"lr": 0.01, "weight_decay": 0.01, "eps": 1e-6}})";

std::string config(int stage, int64_t micro, const char* optimizer = kAdamW, int batch = 8) {
  return ds::str(R"({"train_batch_size": )", batch, R"(, "train_micro_batch_size_per_gpu": )", micro,
                 R"(, "optimizer": )", optimizer, R"(, "gradient_clipping": 1.0, "bf16": {"enabled": true})",
                 R"(, "zero_optimization": {"stage": )", stage,
                 stage == 3 ? R"(, "stage3_param_persistence_threshold": 0)" : "", "}}");
}

test::TinyShape shape(at::ScalarType compute) {
  test::TinyShape s;
  s.compute_dtype = compute;
  return s;
}

// The fp32 masters of every unit, concatenated (stage 0: whole units).
at::Tensor masters(Engine& e) {
  std::vector<at::Tensor> parts;
  for (size_t u = 0; u < e.unit_count(); ++u) parts.push_back(e.master(u).slice(0, 0, e.unit(u).numel()));
  return at::cat(parts);
}

}  // namespace

TEST(Bf16Compute, OneStepMatchesFp32ComputeWithinBf16Tolerance) {
  std::printf("this CPU: %s\n", cpu_features().describe().c_str());
  // SGD, so the update is the gradient itself. Both runs start from the same bf16 weights;
  // the bf16 run rounds activations and gradients to 8 significant bits.
  test::TinyRun fp32(test::solo(), config(0, 8, kSgd), shape(at::kFloat));
  test::TinyRun bf16(test::solo(), config(0, 8, kSgd), shape(at::kBFloat16));
  const at::Tensor w0 = masters(fp32.engine());
  ASSERT_TRUE(w0.equal(masters(bf16.engine()))) << "the runs do not start from the same weights";
  fp32.train_to(1);
  bf16.train_to(1);
  const at::Tensor d32 = masters(fp32.engine()) - w0, d16 = masters(bf16.engine()) - w0;
  for (size_t u = 0, at = 0; u < fp32.engine().unit_count(); ++u) {
    for (const auto& slot : fp32.engine().unit(u).slots()) {
      const at::Tensor a = d16.slice(0, int64_t(at) + slot.offset, int64_t(at) + slot.offset + slot.numel);
      const at::Tensor b = d32.slice(0, int64_t(at) + slot.offset, int64_t(at) + slot.offset + slot.numel);
      const double rel = (a - b).norm().item<double>() / (b.norm().item<double>() + 1e-12);
      EXPECT_LT(rel, 0.05) << slot.name << ": the bf16 step differs from the fp32 step by " << rel;
    }
    at += size_t(fp32.engine().unit(u).numel());
  }
  EXPECT_NEAR(bf16.result().losses[0], fp32.result().losses[0], 0.02);
}

TEST(Bf16Compute, TwoAndFourRanksMatchOneAndStageThreeMatchesStageZero) {
  // Data parallelism is exact only up to the order of the bf16 gradient sums (each rank's
  // micro-batch gradient is rounded to bf16 before the reduction): losses within 0.02 over 10
  // steps of a loss that falls from ~5.5.
  test::TrainResult one = test::train_tiny_shape(test::solo(), config(0, 8), 10, shape(at::kBFloat16));
  EXPECT_LT(one.losses.back(), one.losses.front() - 0.3) << "bf16 compute did not learn";
  for (int world : {2, 4}) {
    test::run_ranks(world, [&](comm::Communicator& c) {
      for (int stage : {0, 3}) {
        auto run = test::train_tiny_shape(c.shared_from_this(), config(stage, 8 / world), 10, shape(at::kBFloat16));
        const double d = test::max_abs_diff(run.losses, one.losses);
        if (c.rank() == 0) std::printf("bf16 compute, %d ranks, stage %d: max |loss - 1 process| %.3g\n", world, stage, d);
        EXPECT_LT(d, 0.02) << world << " ranks, stage " << stage;
      }
    });
  }
}

TEST(Bf16Compute, ResumeIsBitExact) {
  test::TempDir dir;
  test::run_ranks(2, [&](comm::Communicator& c) {
    for (int stage : {0, 2, 3}) {
      const std::string cfg = config(stage, 4), ck = dir / ds::str("ck", stage);
      test::TinyRun whole(c.shared_from_this(), cfg, shape(at::kBFloat16));
      whole.train_to(8);
      test::TinyRun first(c.shared_from_this(), cfg, shape(at::kBFloat16));
      first.train_to(4);
      first.engine().save_checkpoint(ck);
      test::TinyRun second(c.shared_from_this(), cfg, shape(at::kBFloat16));
      second.engine().load_checkpoint(ck);
      second.train_to(8);
      const auto a = whole.result(), b = second.result();
      EXPECT_EQ(b.losses, std::vector<double>(a.losses.begin() + 4, a.losses.end())) << "stage " << stage;
      EXPECT_TRUE(b.weights.equal(a.weights)) << "stage " << stage;
    }
  });
}

TEST(Bf16Compute, ModelStatesFollowDeepSpeedsMixedPrecisionFormulas) {
  // Bytes per rank between steps, Psi = padded parameters, N = 4 ranks, Adam(W): bf16 weights
  // (2 Psi), bf16 gradients (2 Psi), fp32 masters and two states (12 Psi) sharded by stage.
  // Stage 1 keeps the reduced gradient shard (2 Psi/N) beside the full bf16 gradient, so its
  // count is DeepSpeed's 4 Psi + 12 Psi/N plus that shard.
  constexpr int N = 4;
  test::run_ranks(N, [&](comm::Communicator& c) {
    for (int stage : {1, 2, 3}) {
      test::TinyRun run(c.shared_from_this(), config(stage, 8 / N), shape(at::kBFloat16));
      run.train_to(1);
      int64_t psi = 0;
      for (size_t u = 0; u < run.engine().unit_count(); ++u) psi += run.engine().unit(u).padded_numel();
      const Engine::MemoryBreakdown m = run.engine().memory_breakdown();
      const int64_t want = stage == 1 ? 4 * psi + 14 * psi / N : stage == 2 ? 2 * psi + 14 * psi / N : 16 * psi / N;
      EXPECT_EQ(m.total(), want) << "stage " << stage << ": params " << m.params << " grads " << m.grads << " masters "
                                 << m.masters << " states " << m.optimizer_state << ", Psi " << psi;
      EXPECT_EQ(m.masters + m.optimizer_state, 12 * psi / N) << "stage " << stage;
    }
  });
}

TEST(Bf16Compute, GradAccumDtypeFp32KeepsFp32GradientShards) {
  auto with = [](int stage, const char* dtype) {
    std::string c = config(stage, 8);
    c.insert(c.size() - 1, ds::str(R"(, "data_types": {"grad_accum_dtype": ")", dtype, R"("})"));
    return c;
  };
  test::TinyRun bf16(test::solo(), config(2, 8), shape(at::kBFloat16));
  test::TinyRun fp32(test::solo(), with(2, "fp32"), shape(at::kBFloat16));
  EXPECT_EQ(bf16.engine().precision().grad, at::kBFloat16);
  EXPECT_EQ(fp32.engine().precision().grad, at::kFloat);
  bf16.train_to(3);
  fp32.train_to(3);
  EXPECT_EQ(fp32.engine().memory_breakdown().grads, 2 * bf16.engine().memory_breakdown().grads);
  EXPECT_LT(test::max_abs_diff(fp32.result().losses, bf16.result().losses), 0.02);
  EXPECT_ERROR_HAS(test::TinyRun(test::solo(), with(0, "fp32"), shape(at::kBFloat16)), "at ZeRO stage 0");
  EXPECT_ERROR_HAS(test::TinyRun(test::solo(), with(2, "fp16"), shape(at::kBFloat16)),
                   "data_types.grad_accum_dtype fp16: gradients accumulate in fp32 or in the compute dtype (bf16)");
}
