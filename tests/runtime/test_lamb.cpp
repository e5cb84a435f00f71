// Lamb (DeepSpeed's FusedLamb arithmetic, one trust ratio per parameter tensor) against a plain
// LibTorch loop that applies Lamb tensor by tensor — no engine, no flat buffers — on 1 process
// and on 2 and 3 ranks at ZeRO stages 0-3, and over 2 tensor ranks x 2 data ranks (a tensor
// split over ranks gets its whole norm); bf16 trains alike at every stage; resume is
// bit-exact; a flat master on its own is one tensor; what Lamb cannot do (NVMe) is refused
// however it is asked for.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>

#include "ds/ckpt/checkpoint.h"
#include "ds/common/error.h"
#include "ds/config/config.h"
#include "ds/estimate/estimate.h"
#include "ds/optim/optimizer.h"
#include "support/errors.h"
#include "support/files.h"
#include "support/ranks.h"
#include "train_util.h"

using namespace ds;

namespace {

struct PlainLamb {
  double lr = 0.01, weight_decay = 0.01, eps = 1e-6, b1 = 0.9, b2 = 0.999, max_coeff = 10.0, min_coeff = 0.01;
  bool bias_correction = true, eps_inside_sqrt = false;

  std::string json() const {
    return ds::str(R"({"type": "Lamb", "params": {"lr": )", lr, R"(, "weight_decay": )", weight_decay, R"(, "eps": )",
                   eps, R"(, "max_coeff": )", max_coeff, R"(, "min_coeff": )", min_coeff, R"(, "bias_correction": )",
                   bias_correction ? "true" : "false", R"(, "eps_inside_sqrt": )", eps_inside_sqrt ? "true" : "false",
                   "}}");
  }

  // The reference: each parameter tensor of the model on its own.
  test::TrainResult train(int steps, int64_t batch) const {
    std::vector<at::Tensor> m, v;
    return test::train_plain_loop(
        [&](Gpt& model, int step) {
          const std::vector<at::Tensor> params = model->parameters();
          if (m.empty())
            for (const at::Tensor& p : params) m.push_back(at::zeros_like(p)), v.push_back(at::zeros_like(p));
          const double t = step + 1;
          const double lr_t = bias_correction ? lr * std::sqrt(1 - std::pow(b2, t)) / (1 - std::pow(b1, t)) : lr;
          for (size_t i = 0; i < params.size(); ++i) {
            at::Tensor p = params[i];
            const at::Tensor g = p.grad();
            m[i] = b1 * m[i] + (1 - b1) * g;
            v[i] = b2 * v[i] + (1 - b2) * g * g;
            const at::Tensor denom = eps_inside_sqrt ? at::sqrt(v[i] + eps) : at::sqrt(v[i]) + eps;
            const at::Tensor u = m[i] / denom + weight_decay * p;
            const double wn = p.norm().item<double>(), un = u.norm().item<double>();
            const double r = wn == 0 || un == 0 ? 1.0 : std::min(max_coeff, std::max(min_coeff, wn / un));
            p.sub_(lr_t * r * u);
          }
        },
        steps, batch);
  }
};

std::string config(int stage, int64_t batch, int64_t micro, const PlainLamb& lamb, const std::string& extra = "") {
  return ds::str(R"({"train_batch_size": )", batch, R"(, "train_micro_batch_size_per_gpu": )", micro,
                 R"(, "optimizer": )", lamb.json(), R"(, "zero_optimization": {"stage": )", stage,
                 stage == 3 ? R"(, "stage3_param_persistence_threshold": 0)" : "", "}", extra, "}");
}

// The attention key biases (true gradient 0: what they get is rounding noise, which an
// Adam-like update amplifies) are left out, as for AdamW (test_engine.cpp).
void expect_close(const test::TrainResult& run, const test::TrainResult& ref, const std::string& what) {
  const at::Tensor diff = (run.weights - ref.weights).abs().masked_fill(ref.key_bias, 0.0);
  EXPECT_LT(test::max_abs_diff(run.losses, ref.losses), 1e-5) << what;
  EXPECT_LT(diff.max().item<double>(), 1e-5) << what << " at " << diff.argmax().item<int64_t>();
}

}  // namespace

TEST(Lamb, MatchesAPlainPerTensorLoopOnOneProcessAndShardedOverTwoRanks) {
  PlainLamb lamb;  // DeepSpeed's defaults but the learning rate (its trust ratios are small
  lamb.lr = 0.05;  // for the tiny model's weights: at 0.01 it hardly moves in 10 steps)
  PlainLamb clamped = lamb;  // a small max_coeff: the larger ratios are clamped
  clamped.max_coeff = 0.05;
  PlainLamb variant;  // the other branches: eps inside the square root, no bias correction
  variant.eps_inside_sqrt = true, variant.bias_correction = false, variant.min_coeff = 0.5;
  const std::vector<std::pair<std::string, PlainLamb>> cases = {{"lr 0.05", lamb}, {"lr 0.05, max_coeff 0.05", clamped},
                                                                {"eps inside, no correction, min_coeff 0.5", variant}};
  std::vector<test::TrainResult> refs;
  for (const auto& [name, lamb] : cases) {
    refs.push_back(lamb.train(10, 8));
    for (double l : refs.back().losses) std::printf(" %.3f", l);
    std::printf(" <- %s\n", name.c_str());
    EXPECT_LT(refs.back().losses.back(), refs.back().losses.front() - 0.2) << name << ": the reference did not learn";
    expect_close(test::train_tiny(test::solo(), config(0, 8, 8, lamb), 10), refs.back(), name + ", 1 process");
  }
  EXPECT_GT((refs[0].weights - refs[1].weights).abs().max().item<double>(), 1e-3) << "max_coeff changed nothing";
  test::run_ranks(2, [&](comm::Communicator& c) {
    for (size_t i = 0; i < cases.size(); ++i)
      for (int stage : {0, 1, 2, 3})
        expect_close(test::train_tiny(c.shared_from_this(), config(stage, 8, 4, cases[i].second), 10), refs[i],
                     ds::str(cases[i].first, ", 2 ranks, stage ", stage));
  });
}

TEST(Lamb, ThreeRanksSplitTensorsUnevenlyAndStillUseWholeNorms) {
  // 12 examples over 3 ranks, with accumulation: shard boundaries fall inside tensors, and a
  // rank holding a piece of a tensor must not take its piece's norm for the tensor's.
  PlainLamb lamb;
  lamb.lr = 0.05;
  const auto ref = lamb.train(8, 12);
  test::run_ranks(3, [&](comm::Communicator& c) {
    for (int stage : {1, 2, 3})
      expect_close(test::train_tiny(c.shared_from_this(), config(stage, 12, 2, lamb, R"(, "gradient_accumulation_steps": 2)"), 8),
                   ref, ds::str("3 ranks, stage ", stage));
  });
}

// Tensor parallelism splits the attention and MLP weights and the vocabulary over the tensor
// group: a split tensor's norms are the sums over its slices, a replicated one (LayerNorms,
// row-parallel biases) counts once. Tensor 2 x data 2 at ZeRO 0-3 against the plain loop: the
// losses, and the whole weights the checkpoint reader joins from the slices.
TEST(Lamb, UnderTensorParallelismASplitTensorGetsItsWholeNorm) {
  PlainLamb lamb;
  lamb.lr = 0.05;
  const auto ref = lamb.train(10, 8);
  test::TempDir dir("ds_lamb_tp");
  test::run_ranks(4, [&](comm::Communicator& c) {
    test::TinyShape shape;
    shape.tensor = 2;
    for (int stage : {0, 1, 2, 3}) {
      const std::string what = ds::str("tensor 2 x data 2, stage ", stage);
      test::TinyRun run(c.shared_from_this(), config(stage, 8, 4, lamb, R"(, "tensor_parallel": {"autotp_size": 2})"),
                        shape);
      run.train_to(10);
      test::TrainResult got = ref;
      got.losses = run.result().losses;
      const std::string ck = dir / ds::str("stage", stage);
      run.engine().save_checkpoint(ck);
      std::vector<at::Tensor> whole;
      for (const auto& [name, t] : ckpt::CheckpointReader(ck).load_fp32_weights()) whole.push_back(t.reshape({-1}));
      got.weights = at::cat(whole);
      ASSERT_EQ(got.weights.numel(), ref.weights.numel()) << what;
      expect_close(got, ref, what);
    }
  });
}

TEST(Lamb, ResumesBitForBitAtStageTwo) {
  test::TempDir dir("ds_lamb");
  const std::string cfg = config(2, 8, 4, PlainLamb{});
  test::run_ranks(2, [&](comm::Communicator& c) {
    test::TinyRun whole(c.shared_from_this(), cfg);
    whole.train_to(12);
    test::TinyRun first(c.shared_from_this(), cfg);
    first.train_to(6);
    first.engine().save_checkpoint(dir / "ck");
    test::TinyRun second(c.shared_from_this(), cfg);
    second.engine().load_checkpoint(dir / "ck");
    second.train_to(12);
    const auto a = whole.result(), b = second.result();
    ASSERT_EQ(b.losses.size(), 6u);
    for (size_t s = 0; s < 6; ++s) EXPECT_EQ(b.losses[s], a.losses[6 + s]) << "step " << 7 + s;
    EXPECT_TRUE(at::equal(b.weights, a.weights));
  });
}

TEST(Lamb, AFlatMasterOnItsOwnIsOneTensor) {
  Config c = Config::parse(R"({"optimizer": {"type": "Lamb", "params": {"lr": 0.1, "weight_decay": 0.0}}})");
  auto opt = optim::make_optimizer(c.optimizer);
  EXPECT_EQ(opt->name(), "Lamb");
  EXPECT_EQ(opt->state_names(), (std::vector<std::string>{"exp_avg", "exp_avg_sq"}));
  // ||w|| = 0: the ratio is 1 and the step is Adam's first step without eps: -lr sign(g).
  at::Tensor w = at::zeros({4});
  const at::Tensor g = at::tensor({1.0f, -2.0f, 0.5f, 4.0f});
  auto st = opt->init_state(4);
  opt->step(w, g, st, {1, 0.1, std::nullopt});
  EXPECT_TRUE(at::allclose(w, -0.1 * at::sign(g), 1e-5, 1e-6)) << w;
  // ||w|| = 1. After one step u = m / sqrt(v) = 0.1 g / sqrt(0.001 g²) = sqrt(10) sign(g) (the
  // bias correction goes into the step size, not into u), so ||u|| = 2 sqrt(10), the ratio is
  // 1 / (2 sqrt(10)) and the step lr sqrt(1 - b2) / (1 - b1) x ratio x u = sqrt(0.001) / 2 sign(g).
  w = at::full({4}, 0.5f);
  st = opt->init_state(4);
  opt->step(w, g, st, {1, 0.1, std::nullopt});
  EXPECT_TRUE(at::allclose(w, 0.5 - std::sqrt(0.001) / 2 * at::sign(g), 1e-5, 1e-6)) << w;
}

TEST(Lamb, Bf16TrainsAlikeAtEveryStage) {
  // bf16 weights, gradients and reductions (bf16 gradients widened for the fp32 masters and
  // states): the stages differ only by the order of bf16 sums, as for AdamW (test_zero.cpp).
  PlainLamb lamb;
  lamb.lr = 0.05;
  test::run_ranks(2, [&](comm::Communicator& c) {
    const std::string bf16 = R"(, "bf16": {"enabled": true})";
    const auto base = test::train_tiny(c.shared_from_this(), config(0, 8, 4, lamb, bf16), 10);
    EXPECT_LT(base.losses.back(), base.losses.front() - 0.2) << "bf16 Lamb did not learn";
    for (int stage : {1, 2, 3})
      EXPECT_LT(test::max_abs_diff(test::train_tiny(c.shared_from_this(), config(stage, 8, 4, lamb, bf16), 10).losses,
                                   base.losses),
                1e-3)
          << "stage " << stage;
    // bf16 compute: bf16 weights and gradients, which Lamb widens for its fp32 masters.
    test::TinyShape compute;
    compute.compute_dtype = at::kBFloat16;
    const auto base16 = test::train_tiny_shape(c.shared_from_this(), config(0, 8, 4, lamb, bf16), 10, compute);
    EXPECT_LT(base16.losses.back(), base16.losses.front() - 0.2) << "bf16-compute Lamb did not learn";
    const double d = test::max_abs_diff(
        test::train_tiny_shape(c.shared_from_this(), config(3, 8, 4, lamb, bf16), 10, compute).losses, base16.losses);
    if (c.rank() == 0) std::printf("bf16 compute, stage 3 vs 0: max loss diff %.3g\n", d);
    EXPECT_LT(d, 1e-2);
  });
}

TEST(Lamb, ItsSettingsRoundTripAndWhatItCannotDoIsRefusedHoweverAskedFor) {
  const Config c = Config::parse(R"({"optimizer": {"type": "Lamb", "params": {"lr": 0.02, "max_coeff": 0.5,
                                     "min_coeff": 0.1, "eps_inside_sqrt": true, "bias_correction": false}}})");
  const Config again = Config::from_json(c.to_json(), "round trip");
  EXPECT_EQ(again.optimizer.type, OptimizerType::kLamb);
  EXPECT_EQ(again.optimizer.max_coeff, 0.5);
  EXPECT_EQ(again.optimizer.min_coeff, 0.1);
  EXPECT_TRUE(again.optimizer.eps_inside_sqrt);
  EXPECT_FALSE(again.optimizer.bias_correction);

  // A Lamb the program passes with a config that swaps states to disk.
  test::TempDir dir("ds_lamb_nvme");
  const std::string nvme = ds::str(R"({"train_batch_size": 8, "train_micro_batch_size_per_gpu": 8,
    "optimizer": {"type": "AdamW"}, "zero_optimization": {"stage": 2, "offload_optimizer": {"device": "nvme",
    "nvme_path": ")", dir.path(), R"("}}})");
  test::TinyShape shape;
  shape.optimizer = [&] { return optim::make_optimizer(c.optimizer); };
  EXPECT_ERROR_HAS(test::TinyRun(test::solo(), nvme, shape), "Lamb makes 2 passes over the states per step and cannot swap to NVMe");

  // ds-estimate does not offer the NVMe choices the engine would refuse.
  estimate::ModelShape s;
  s.n_layer = 2, s.d_model = 64, s.n_head = 2, s.seq_len = 64, s.vocab_size = 256;
  estimate::Layout l;
  l.context = 64;
  Config lamb = Config::parse(R"({"train_batch_size": 2, "optimizer": {"type": "Lamb"}, "bf16": {"enabled": true}})");
  lamb.resolve(1);
  const auto choices = estimate::every_choice(lamb, s, l, estimate::Rates::defaults());
  EXPECT_EQ(choices.size(), 4u);  // stages 0-3, no offload
  for (const auto& choice : choices) EXPECT_EQ(choice.offload, "none") << "stage " << choice.stage;
}
