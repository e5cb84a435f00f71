// 1-bit Lamb in the engine: the warm-up is Lamb (no bias correction) bit for bit; warm-up and
// compressed phase match a plain LibTorch simulation of its ranks, tensor by tensor, at ZeRO
// stages 0-2 and under tensor parallelism; the compressed phase sends a small fraction of
// Lamb's bytes; resume is bit-exact (per-rank error feedback, per-tensor scalars by name), and
// the per-tensor scalars survive a change of data-parallel size (missing or corrupt ones are
// errors); what it cannot do is refused.
#include <ATen/ATen.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <map>

#include "ds/ckpt/checkpoint.h"
#include "ds/common/error.h"
#include "ds/config/config.h"
#include "ds/estimate/estimate.h"
#include "support/errors.h"
#include "support/files.h"
#include "support/ranks.h"
#include "train_util.h"

using namespace ds;

namespace {

std::string config(int stage, const std::string& optimizer, const std::string& extra = "", int64_t batch = 8) {
  return ds::str(R"({"train_batch_size": )", batch, R"(, "gradient_accumulation_steps": 1, "optimizer": )", optimizer,
                 R"(, "zero_optimization": {"stage": )", stage, "}", extra, "}");
}

test::PlainOneBitLamb plain(int64_t freeze_step) {
  test::PlainOneBitLamb o;
  o.lr = 0.05;  // Lamb's steps are lr x trust ratio (~0.1-1 here): a larger lr lets the tiny task learn in 10 steps
  // eps bounds the step of an element whose frozen variance is ~0 (see test_onebit_adam.cpp):
  // 1e-3 keeps the comparison of compressed runs well-conditioned.
  o.eps = 1e-3;
  o.freeze_step = freeze_step;
  return o;
}

double weight_diff(const test::TrainResult& a, const test::TrainResult& b) {
  return (a.weights - b.weights).abs().masked_fill(b.key_bias, 0.0).max().item<double>();
}

int64_t bytes_sent(comm::Communicator& c) {
  int64_t n = 0;
  for (const auto& [op, s] : c.logger().totals()) n += s.sent_bytes;
  return n;
}

}  // namespace

TEST(OneBitLamb, WarmUpIsLambWithoutBiasCorrectionBitForBit) {
  const std::string lamb = R"({"type": "Lamb", "params": {"lr": 0.05, "weight_decay": 0.01, "eps": 0.001,
                                "bias_correction": false}})";
  test::run_ranks(2, [&](comm::Communicator& c) {
    for (int stage : {0, 2}) {
      const auto a = test::train_tiny(c.shared_from_this(), config(stage, lamb), 4);
      const auto b = test::train_tiny(c.shared_from_this(), config(stage, plain(100).json()), 4);
      EXPECT_EQ(b.losses, a.losses) << "stage " << stage;
      EXPECT_TRUE(b.weights.equal(a.weights)) << "stage " << stage;
    }
  });
}

TEST(OneBitLamb, MatchesAPlainLibTorchSimulationOfItsRanks) {
  // freeze_step 4, then 6 compressed steps, against DeepSpeed's OnebitLamb arithmetic written
  // out tensor by tensor for the same number of simulated ranks.
  const int steps = 10;
  test::PlainOneBitLamb o = plain(4);
  for (int world : {1, 2, 3}) {
    o.batch = world == 3 ? 6 : 8;
    const auto ref = test::train_plain_onebit_lamb(o, world, steps);
    EXPECT_LT(ref.losses.back(), ref.losses.front() - 0.3) << "the reference did not learn on " << world << " ranks";
    test::run_ranks(world, [&](comm::Communicator& c) {
      for (int stage : {0, 1, 2}) {
        if (world == 1 && stage > 0) continue;
        const auto run = test::train_tiny(c.shared_from_this(), config(stage, o.json(), "", o.batch), steps);
        const double loss_diff = test::max_abs_diff(run.losses, ref.losses), w_diff = weight_diff(run, ref);
        const double apart = test::parted_fraction(run, ref);
        if (c.rank() == 0)
          std::printf("%d ranks, stage %d: max |loss - plain| %.3g, max |weight - plain| %.3g, %.2f%% of the weights "
                      "> 1e-4 apart\n", world, stage, loss_diff, w_diff, 100 * apart);
        if (world == 1) {  // nothing is compressed on one rank: the arithmetic alone
          EXPECT_LT(loss_diff, 1e-5);
          EXPECT_LT(w_diff, 1e-5);
          continue;
        }
        // Sign compression turns a rounding-level difference into a whole step of an element
        // near 0, as for 1-bit Adam: a few weights may part; an error in the algorithm (a
        // wrong scale, factor or reconstructed gradient) moves most of them.
        EXPECT_LT(loss_diff, 1e-3) << world << " ranks, stage " << stage;
        EXPECT_LT(apart, 0.02) << world << " ranks, stage " << stage;
      }
    });
  }
}

TEST(OneBitLamb, UnderTensorParallelismASplitTensorGetsItsWholeNorms) {
  // Tensor 2 x data 1: nothing is compressed (one data rank), so every number of the
  // compressed phase — the scales (a mean over whole tensors' rms), the factor maxima and
  // norms (a split tensor's over the tensor group) — must give the 1-process simulation's
  // weights. Tensor 2 x data 2: each tensor rank compresses its own slices (one scale per
  // slice's chunk, as DeepSpeed's per-rank optimizer would), so it follows the 2-rank
  // simulation, whose chunks are whole units', only as closely as compression allows.
  const int steps = 8;
  const test::PlainOneBitLamb o = plain(3);
  test::TempDir dir("ds_onebit_lamb_tp");
  auto train = [&](comm::Communicator& c, int stage, const std::string& name) {
    test::TinyShape shape;
    shape.tensor = 2;
    test::TinyRun run(c.shared_from_this(), config(stage, o.json(), R"(, "tensor_parallel": {"autotp_size": 2})"), shape);
    run.train_to(steps);
    test::TrainResult got;
    got.losses = run.result().losses;
    const std::string ck = dir / name;
    run.engine().save_checkpoint(ck);
    std::vector<at::Tensor> whole;
    for (const auto& [n, t] : ckpt::CheckpointReader(ck).load_fp32_weights()) whole.push_back(t.reshape({-1}));
    got.weights = at::cat(whole);
    return got;
  };
  const auto one = test::train_plain_onebit_lamb(o, 1, steps);
  test::run_ranks(2, [&](comm::Communicator& c) {
    for (int stage : {0, 2}) {
      test::TrainResult got = train(c, stage, ds::str("t2d1-", stage));
      got.key_bias = one.key_bias;
      ASSERT_EQ(got.weights.numel(), one.weights.numel());
      EXPECT_LT(test::max_abs_diff(got.losses, one.losses), 1e-5) << "stage " << stage;
      EXPECT_LT(weight_diff(got, one), 1e-5) << "stage " << stage;
    }
  });
  const auto two = test::train_plain_onebit_lamb(o, 2, steps);
  test::run_ranks(4, [&](comm::Communicator& c) {
    const test::TrainResult got = train(c, 2, "t2d2");
    for (int s = 0; s < int(o.freeze_step); ++s) EXPECT_LT(std::abs(got.losses[size_t(s)] - two.losses[size_t(s)]), 1e-5);
    EXPECT_LT(test::max_abs_diff(got.losses, two.losses), 0.1);
    EXPECT_LT(got.losses.back(), got.losses.front() - 0.3);
  });
}

TEST(OneBitLamb, TheCompressedPhaseSendsAFractionOfLambsBytes) {
  const std::string lamb = R"({"type": "Lamb", "params": {"lr": 0.05, "bias_correction": false}})";
  test::run_ranks(2, [&](comm::Communicator& c) {
    auto bytes_of_steps = [&](const std::string& cfg) {
      test::TinyRun run(c.shared_from_this(), cfg);
      run.train_to(3);
      c.logger().reset();
      c.logger().set_enabled(true);
      run.train_to(7);
      c.logger().set_enabled(false);
      return bytes_sent(c);
    };
    const int64_t full = bytes_of_steps(config(0, lamb)), compressed = bytes_of_steps(config(0, plain(2).json()));
    const double ratio = double(compressed) / double(full);
    if (c.rank() == 0) std::printf("compressed phase: %.4f of Lamb's bytes (1/%.1f)\n", ratio, 1.0 / ratio);
    EXPECT_LT(ratio, 1.0 / 16);
  });
}

TEST(OneBitLamb, ResumeIsBitExactAndThePerTensorStatesAreWhatMakesIt) {
  for (int stage : {0, 2}) {
    for (int save_at : {2, 5}) {  // at freeze_step (the fresh variance just copied) and in the compressed phase
      test::TempDir dir("ds_onebit_lamb_resume");
      test::run_ranks(2, [&](comm::Communicator& c) {
        const std::string cfg = config(stage, plain(2).json());
        test::TinyRun straight(c.shared_from_this(), cfg);
        straight.train_to(save_at);
        straight.engine().save_checkpoint(dir.path());
        straight.train_to(8);
        test::TinyRun resumed(c.shared_from_this(), cfg);
        resumed.engine().load_checkpoint(dir.path());
        resumed.train_to(8);
        const std::string what = ds::str("stage ", stage, ", saved at step ", save_at);
        EXPECT_TRUE(resumed.result().weights.equal(straight.result().weights)) << what;
        // The per-tensor scalars steer the steps: other frozen trust ratios, another run.
        test::TinyRun other(c.shared_from_this(), cfg);
        other.engine().load_checkpoint(dir.path());
        std::vector<std::pair<std::string, at::Tensor>> halved = other.engine().optimizer().tensor_states();
        ASSERT_FALSE(halved.empty()) << what;
        for (auto& [name, t] : halved) t = t.clone(), t[0] = t[0].item<double>() / 2;
        other.engine().optimizer().load_tensor_states(halved);
        other.train_to(8);
        EXPECT_FALSE(other.result().weights.equal(straight.result().weights)) << what;
        // Without them the compressed phase cannot go on: an error naming a tensor, not a
        // silent run whose frozen ratios are 0. A corrupt value is refused.
        test::TinyRun missing(c.shared_from_this(), cfg);
        missing.engine().load_checkpoint(dir.path());
        missing.engine().optimizer().load_tensor_states({});
        EXPECT_ERROR_HAS(missing.train_to(8), "the loaded checkpoint has no per-tensor state of ");
        halved[0].second = at::tensor({0.5, std::nan(""), 1.0}, at::kDouble);
        EXPECT_ERROR_HAS(missing.engine().optimizer().check_tensor_states(halved), "the checkpoint is corrupt");
      });
    }
  }
}

TEST(OneBitLamb, ThePerTensorStatesLoadAtAnotherDataParallelSize) {
  test::TempDir dir("ds_onebit_lamb_reshape");
  test::run_ranks(2, [&](comm::Communicator& c) {
    test::TinyRun run(c.shared_from_this(), config(2, plain(2).json()));
    run.train_to(5);
    run.engine().save_checkpoint(dir.path());
  });
  // In the model-states file, by parameter name: coeff, factor, scale.
  std::map<std::string, std::vector<double>> saved;
  for (const auto& [name, t] : ckpt::CheckpointReader(dir.path()).load_model_states(0).optimizer_tensors)
    saved[name] = {t[0].item<double>(), t[1].item<double>(), t[2].item<double>()};
  ASSERT_FALSE(saved.empty());
  for (const auto& [name, v] : saved) {
    EXPECT_GT(v[0], 0.0) << name << ": no trust ratio was averaged in the warm-up";
    EXPECT_GT(v[2], 0.0) << name << ": no scale was set in the compressed phase";
  }
  // One rank, stage 0: every tensor's scalars come back by name, and training goes on as on
  // 2 ranks (the same global batch; only the compression, and its error feedback, is gone).
  test::TinyRun one(test::solo(), config(0, plain(2).json()));
  one.engine().load_checkpoint(dir.path());
  const auto loaded = one.engine().optimizer().tensor_states();
  ASSERT_EQ(loaded.size(), saved.size());
  for (const auto& [name, t] : loaded) {
    ASSERT_TRUE(saved.count(name)) << name;
    for (int64_t i = 0; i < 3; ++i) EXPECT_EQ(t[i].item<double>(), saved[name][size_t(i)]) << name << " value " << i;
  }
  one.train_to(8);
  const auto two = test::train_plain_onebit_lamb(plain(2), 2, 8);
  const auto r = one.result();
  ASSERT_EQ(r.losses.size(), 3u);
  for (size_t s = 0; s < 3; ++s) EXPECT_LT(std::abs(r.losses[s] - two.losses[5 + s]), 0.05) << "step " << 6 + s;
  EXPECT_LT(r.losses[2], r.losses[0] - 0.1);
}

TEST(OneBitLamb, ItsSettingsRoundTripAndWhatItCannotDoIsRefused) {
  const Config c = Config::parse(R"({"optimizer": {"type": "OneBitLamb", "params": {"lr": 0.011, "max_coeff": 0.3,
      "min_coeff": 0.01, "freeze_step": 1000, "coeff_beta": 0.95, "factor_max": 3.0, "factor_min": 0.6,
      "factor_threshold": 0.2, "weight_decay": 0.01, "bias_correction": false, "comm_backend_name": "mpi"}}})");
  const Config again = Config::from_json(c.to_json(), "round trip");
  EXPECT_EQ(again.optimizer.type, OptimizerType::kOneBitLamb);
  EXPECT_EQ(again.optimizer.coeff_beta, 0.95);
  EXPECT_EQ(again.optimizer.factor_max, 3.0);
  EXPECT_EQ(again.optimizer.factor_min, 0.6);
  EXPECT_EQ(again.optimizer.factor_threshold, 0.2);
  EXPECT_EQ(again.optimizer.freeze_step, 1000);
  EXPECT_EQ(again.optimizer.max_coeff, 0.3);
  EXPECT_FALSE(again.optimizer.bias_correction);  // DeepSpeed's default true is never applied by OnebitLamb

  auto error_of = [](const std::string& json) {
    try {
      Config::parse(json);
    } catch (const ConfigError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  auto with = [](const std::string& params, const std::string& zero = "{}") {
    return ds::str(R"({"train_batch_size": 8, "optimizer": {"type": "OneBitLamb", "params": {)", params,
                   R"(}}, "zero_optimization": )", zero, "}");
  };
  EXPECT_THAT(error_of(with(R"("bias_correction": true)")), testing::HasSubstr("optimizer.params.bias_correction: 1-bit Lamb corrects no bias"));
  EXPECT_THAT(error_of(with(R"("factor_min": 2, "factor_max": 1)")), testing::HasSubstr("factor_min 2 is above factor_max 1"));
  EXPECT_THAT(error_of(with(R"("factor_min": 0)")), testing::HasSubstr("optimizer.params.factor_min: must be > 0"));
  EXPECT_THAT(error_of(with(R"("coeff_beta": 1)")), testing::HasSubstr("optimizer.params.coeff_beta: must be < 1"));
  EXPECT_THAT(error_of(with(R"("min_coeff": 20)")), testing::HasSubstr("min_coeff 20 is above max_coeff 10"));
  EXPECT_THAT(error_of(with(R"("amsgrad": true)")), testing::HasSubstr("amsgrad"));
  EXPECT_THAT(error_of(with(R"("var_freeze_step": 3)")), testing::HasSubstr("unknown parameter for optimizer OneBitLamb"));
  EXPECT_THAT(error_of(with("", R"({"stage": 3})")), testing::HasSubstr("OneBitLamb works with ZeRO stages 0-2 here"));
  EXPECT_THAT(error_of(with("", R"({"stage": 2, "offload_optimizer": {"device": "nvme", "nvme_path": "/tmp"}})")),
              testing::HasSubstr("OneBitLamb cannot swap its states to NVMe"));
  // A trust-ratio average longer than the warm-up is a warning.
  Config short_warmup = Config::parse(with(R"("freeze_step": 5, "coeff_beta": 0.9)"));
  short_warmup.resolve(1);
  bool warned = false;
  for (const auto& w : short_warmup.warnings()) warned |= w.find("optimizer.params.coeff_beta") != std::string::npos;
  EXPECT_TRUE(warned);

  // ds-estimate offers only what the engine runs: stages 0-2, no NVMe.
  estimate::ModelShape s;
  s.n_layer = 2, s.d_model = 64, s.n_head = 2, s.seq_len = 64, s.vocab_size = 256;
  estimate::Layout l;
  l.context = 64;
  Config cfg = Config::parse(R"({"train_batch_size": 2, "optimizer": {"type": "OneBitLamb"}})");
  cfg.resolve(1);
  for (const auto& choice : estimate::every_choice(cfg, s, l, estimate::Rates::defaults())) {
    EXPECT_LT(choice.stage, 3);
    EXPECT_EQ(choice.offload, "none");
  }
}
