// The engine's seams, end to end: it matches a plain LibTorch loop (the external reference
// every parallel layout is checked against); a bf16 working dtype trains at stages 0, 2 and 3
// with bf16 weights and gathers; an optimizer that owns the step and syncs its own gradients
// matches the standard path bit for bit; a state that resets on load does.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "ds/common/error.h"
#include "support/files.h"
#include "support/ranks.h"
#include "train_util.h"

using namespace ds;

namespace {

const char* kAdamW = R"({"type": "AdamW", "params": {"lr": 0.01, "weight_decay": 0.01, "eps": 1e-6}})";

std::string config(int stage, int64_t micro, const std::string& extra = "", const char* optimizer = kAdamW,
                   const char* clip = "0.5") {
  return ds::str(R"({"train_batch_size": 8, "train_micro_batch_size_per_gpu": )", micro, R"(, "optimizer": )",
                 optimizer, R"(, "gradient_clipping": )", clip, R"(, "zero_optimization": {"stage": )", stage,
                 stage == 3 ? R"(, "stage3_param_persistence_threshold": 0)" : "", "}", extra, "}");
}

void expect_close(const test::TrainResult& run, const test::TrainResult& ref, double tol, const std::string& what) {
  at::Tensor diff = (run.weights - ref.weights).abs().masked_fill(ref.key_bias, 0.0);
  EXPECT_LT(test::max_abs_diff(run.losses, ref.losses), tol) << what;
  EXPECT_LT(diff.max().item<double>(), tol) << what << " at " << diff.argmax().item<int64_t>();
}

}  // namespace

TEST(EngineSeams, MatchesAPlainLibTorchLoopWithAdamWAndClipping) {
  // torch::optim::AdamW + torch::nn::utils::clip_grad_norm_ on the whole batch of 8, against the
  // engine on 1 process (stage 0) and on 2 ranks x 4 (stages 0 and 2), 10 steps. The engine's
  // AdamW is its SIMD kernel (torch's arithmetic to a few ulp); the key biases, whose true
  // gradient is 0, take noise-driven Adam steps and are left out (see test_engine.cpp).
  const auto ref = test::train_plain_libtorch({}, 10);
  EXPECT_LT(ref.losses.back(), ref.losses.front() - 0.5) << "the reference did not learn";
  expect_close(test::train_tiny(test::solo(), config(0, 8), 10), ref, 1e-5, "1 process, stage 0");
  test::run_ranks(2, [&](comm::Communicator& c) {
    for (int stage : {0, 2})
      expect_close(test::train_tiny(c.shared_from_this(), config(stage, 4), 10), ref, 1e-5,
                   ds::str("2 ranks, stage ", stage));
  });
}

TEST(EngineSeams, Bf16WorkingWeightsTrainAtEveryStage) {
  // compute_dtype bf16: the units hold bf16 weights and gradients, stage 3 gathers bf16 shards
  // straight into bf16 working buffers; masters and states stay fp32. Same initial weights as
  // the bf16-storage run (fp32 weights holding bf16 values), so the curves start together and
  // drift by bf16 rounding of activations and gradients.
  const std::string bf16 = R"(, "bf16": {"enabled": true})";
  test::run_ranks(2, [&](comm::Communicator& c) {
    const auto storage = test::train_tiny(c.shared_from_this(), config(0, 4, bf16), 10);
    test::TinyShape compute;
    compute.compute_dtype = at::kBFloat16;
    std::vector<test::TrainResult> runs;
    for (int stage : {0, 2, 3}) {
      test::TinyRun run(c.shared_from_this(), config(stage, 4, bf16), compute);
      EXPECT_EQ(run.engine().precision().working, at::kBFloat16);
      for (size_t u = 0; u < run.engine().unit_count(); ++u) {
        EXPECT_EQ(run.engine().unit(u).dtype(), at::kBFloat16);
        EXPECT_EQ(run.engine().master(u).scalar_type(), at::kFloat);
      }
      Engine::MemoryBreakdown mem;
      run.train_to(10, [&](Engine& e, int step) {
        if (step != 9) return;
        mem = e.memory_breakdown();
        if (stage == 3)  // a unit in use is gathered into bf16, not widened
          for (size_t u = 0; u < e.unit_count(); ++u)
            if (e.unit(u).gathered()) {
              EXPECT_EQ(e.unit(u).params().scalar_type(), at::kBFloat16);
            }
      });
      if (stage == 0) {  // bf16 weights: 2 bytes per padded element, fp32 masters 4
        int64_t psi = 0;
        for (size_t u = 0; u < run.engine().unit_count(); ++u) psi += run.engine().unit(u).padded_numel();
        EXPECT_EQ(mem.params, 2 * psi);
        EXPECT_EQ(mem.masters, 4 * psi);
      }
      runs.push_back(run.result());
      const double drift = test::max_abs_diff(runs.back().losses, storage.losses);
      if (c.rank() == 0) std::printf("bf16 compute, stage %d: max |loss - bf16-storage loss| %.3g\n", stage, drift);
      EXPECT_LT(drift, 0.15) << "stage " << stage;  // measured 0.045 (loss 5.5 -> 4.0)
      EXPECT_LT(runs.back().losses.back(), runs.back().losses.front() - 0.3) << "stage " << stage << " did not learn";
    }
    // Stages 2 and 3 reduce-scatter the same bf16 gradients into the same fp32 shards.
    EXPECT_EQ(test::max_abs_diff(runs[1].losses, runs[2].losses), 0.0);
    EXPECT_TRUE(runs[1].weights.equal(runs[2].weights));
  });
}

namespace {

// SGD with momentum (torch.optim's arithmetic) that averages its own gradients: it asks for
// no gradient traffic during backward (GradSync::kNone) and all-reduces each segment's
// gradient over the data-parallel group in its whole-step hook. It also keeps a counter of
// the steps it took, which a loaded checkpoint resets.
class SelfSyncingSgd final : public optim::FlatOptimizer {
 public:
  SelfSyncingSgd() : FlatOptimizer(config()) {}
  std::string name() const override { return "SelfSyncingSgd"; }
  std::vector<optim::StateSpec> state_specs() const override {
    return {{"momentum_buffer"}, {"steps_taken", optim::StateSpec::Kind::kResetOnLoad}};
  }
  std::vector<at::Tensor> init_state(int64_t n) const override { return {at::zeros({n}), at::zeros({1})}; }
  zero::GradSync grad_sync(zero::GradSync, int64_t) const override { return zero::GradSync::kNone; }
  void step_all(optim::StepContext& ctx) override {
    EXPECT_EQ(ctx.sync, zero::GradSync::kNone);
    ctx.for_each_segment([&](optim::Segment& s) {
      ctx.data_group->all_reduce(s.grad, comm::ReduceOp::Sum).wait();
      s.grad.mul_(1.0 / ctx.data_group->size());
      step(s.master, s.grad, *s.states, ctx.args, s.copy);
    });
  }
  void step(at::Tensor& p, const at::Tensor& g, std::vector<at::Tensor>& st, const optim::StepArgs& args,
            const optim::WorkingCopy* copy) override {
    if (args.step == 1) st[0].copy_(g);
    else st[0].mul_(0.9).add_(g);
    p.add_(st[0], -args.lr);
    st[1].add_(1.0);
    write_copy(p, copy);
  }

 private:
  static OptimizerConfig config() {
    OptimizerConfig c;
    c.type = OptimizerType::kSGD;
    c.lr = 0.05;
    c.momentum = 0.9;
    return c;
  }
};

}  // namespace

TEST(EngineSeams, AnOptimizerThatSyncsItselfMatchesTheStandardPathBitForBit) {
  const char* sgd = R"({"type": "SGD", "params": {"lr": 0.05, "momentum": 0.9}})";
  test::TempDir dir;  // one directory for both ranks
  test::run_ranks(2, [&](comm::Communicator& c) {
    const std::string cfg = config(0, 4, "", sgd, "0.0");
    test::TinyRun standard(c.shared_from_this(), cfg);
    standard.train_to(6);
    test::TinyShape own;
    own.optimizer = [] { return std::make_unique<SelfSyncingSgd>(); };
    test::TinyRun custom(c.shared_from_this(), cfg, own);
    c.logger().reset();
    c.logger().set_enabled(true);
    custom.train_to(3);
    // No gradient crossed the wire during the backward passes: only the hook's all-reduces (one
    // per unit per step), the loss average, and the ranks agreeing the step is finite (each
    // rank's norm is its own under kNone).
    int64_t all_reduces = 0;
    for (const auto& [op, s] : c.logger().totals()) all_reduces += op == "all_reduce" ? s.calls : 0;
    EXPECT_EQ(all_reduces, 3 * int64_t(custom.engine().unit_count() + 2));
    c.logger().set_enabled(false);
    EXPECT_EQ(custom.engine().optimizer_state(0)[1].item<float>(), 3.0f);
    const std::string path = custom.engine().save_checkpoint(dir.path());
    custom.train_to(6);
    EXPECT_EQ(custom.result().losses, standard.result().losses);
    EXPECT_TRUE(custom.result().weights.equal(standard.result().weights));
    // Resumed: the momentum comes back exactly, the step counter starts over.
    test::TinyRun resumed(c.shared_from_this(), cfg, own);
    resumed.engine().load_checkpoint(dir.path());
    EXPECT_EQ(resumed.engine().optimizer_state(0)[1].item<float>(), 0.0f);
    resumed.train_to(6);
    EXPECT_TRUE(resumed.result().weights.equal(standard.result().weights));
  });
}
