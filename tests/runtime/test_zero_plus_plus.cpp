// ZeRO++ (zero_hpz_partition_size, zero_quantized_weights, zero_quantized_gradients):
//  * hpZ is exact: 4 ranks with secondary copies over pairs train as one process and as a
//    plain LibTorch loop, and the gathers after a step's first really come from the copies;
//  * qwZ and qgZ are lossy by design: they train within a bound of the plain loop, the
//    weights really differ from the exact run's, and hpZ on top of qwZ changes nothing (the
//    copies are the forward's dequantized weights);
//  * a checkpoint saved with all three resumes on the uninterrupted run;
//  * what cannot work is refused at start-up with the key's name.
#include <ATen/ATen.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "ds/common/error.h"
#include "ds/data/dataset.h"
#include "support/errors.h"
#include "support/files.h"
#include "support/ranks.h"
#include "train_util.h"

using namespace ds;

namespace {

// 8 examples per step; `micro` per rank and micro-batch. Stage 3 gathers every unit (no
// persistent ones), so every gather is quantized / secondary where the keys say.
std::string config(int stage, int64_t micro, const std::string& zero_extra = "") {
  return test::plain_adamw_config(stage, micro, zero_extra);
}

double weight_diff(const test::TrainResult& a, const test::TrainResult& b) {
  return (a.weights - b.weights).abs().masked_fill(b.key_bias, 0.0).max().item<double>();
}

void expect_close(const test::TrainResult& run, const test::TrainResult& ref, double tol, const std::string& what) {
  ASSERT_EQ(run.weights.numel(), ref.weights.numel()) << what;
  EXPECT_LT(test::max_abs_diff(run.losses, ref.losses), tol) << what;
  EXPECT_LT(weight_diff(run, ref), tol) << what;
}

}  // namespace

TEST(ZeroPlusPlus, HpzTrainsAsOneProcessAndAsAPlainLoopFromTheSecondaryCopies) {
  const auto plain = test::train_plain_libtorch({}, 10, {});
  EXPECT_LT(plain.losses.back(), plain.losses.front() - 0.5) << "the reference did not learn";
  const auto one = test::train_tiny(test::solo(), config(0, 8), 10);
  test::run_ranks(4, [&](comm::Communicator& c) {
    // 2 examples per rank and step, in 2 micro-batches: per step, each unit's first gather
    // is over the 4 ranks; its backward and the second micro-batch's come from the pair.
    test::TinyRun run(c.shared_from_this(), config(3, 1, R"(, "zero_hpz_partition_size": 2)"));
    run.train_to(10);
    const auto& stats = run.engine().coordinator()->stats();
    EXPECT_EQ(stats.quantized, 0);
    EXPECT_GT(stats.secondary, stats.gathers / 2) << stats.secondary << " of " << stats.gathers;
    const auto got = run.result();
    // Four ranks average in another order than one: Adam turns that into ~3e-5 on a few weights.
    expect_close(got, one, 1e-4, "hpZ over pairs of 4 ranks against 1 process");
    expect_close(got, plain, 1e-4, "hpZ over pairs of 4 ranks against the plain loop");
    // The same 4 ranks without hpZ: the secondary copies change no bit that matters.
    const auto exact = test::train_tiny(c.shared_from_this(), config(3, 1), 10);
    expect_close(got, exact, 1e-6, "hpZ against plain stage 3 on the same ranks");
  });
}

TEST(ZeroPlusPlus, QuantizedWeightsAndGradientsTrainWithinABoundOfThePlainLoop) {
  const auto plain = test::train_plain_libtorch({}, 10, {});
  const auto initial = test::train_plain_libtorch({}, 0, {});
  test::run_ranks(2, [&](comm::Communicator& c) {
    const auto exact = test::train_tiny(c.shared_from_this(), config(3, 4), 10);
    struct Case {
      int stage;
      const char* keys;
      bool weights, grads;
    };
    for (const Case& k : {Case{3, R"(, "zero_quantized_weights": true)", true, false},
                          Case{2, R"(, "zero_quantized_gradients": true)", false, true},
                          Case{3, R"(, "zero_quantized_weights": true, "zero_quantized_gradients": true)", true, true}}) {
      test::TinyRun run(c.shared_from_this(), config(k.stage, 4, k.keys));
      run.train_to(10);
      const std::string what = ds::str("stage ", k.stage, k.keys);
      if (k.stage == 3) {
        const auto& stats = run.engine().coordinator()->stats();
        EXPECT_EQ(stats.quantized > 0, k.weights) << what;
        if (k.weights) {
          EXPECT_EQ(stats.quantized, stats.gathers) << what << ": no persistent unit, every gather";
        }
      }
      const auto got = run.result();
      EXPECT_LT(test::max_abs_diff(got.losses, plain.losses), 0.03) << what;
      // int8 zeroes a group's smallest gradients and Adam turns that into missing +-lr steps,
      // so single weights move apart by up to ~0.1 in 10 steps; measured here: what the
      // weights moved differs from the plain loop's by 13 % (qwZ), 15 % (qgZ), 19 % (both).
      const double moved = (plain.weights - initial.weights).norm().item<double>();
      const double apart = (got.weights - plain.weights).norm().item<double>();
      EXPECT_LT(apart / moved, 0.3) << what;
      EXPECT_GT(weight_diff(got, exact), 1e-5) << what << ": nothing was quantized";
      EXPECT_LT(got.losses.back(), got.losses.front() - 0.5) << what << ": did not learn";
    }
  });
}

// The wiring, exactly: with one value per scale the int8 blocks carry every value (up to the
// rounding of x / s * s), so qwZ + qgZ over 2 and 3 ranks (uneven chunks) trains as the exact
// run: every gathered value and every contribution went where it belongs.
TEST(ZeroPlusPlus, WithOneValuePerScaleQuantizedRunsAreTheExactRun) {
  test::TinyShape one_per_scale;
  one_per_scale.quantization_group = 1;
  for (int world : {2, 3}) {
    test::PlainAdamW adamw;
    adamw.batch = 2 * world;
    const auto plain = test::train_plain_libtorch(adamw, 8, {});
    test::run_ranks(world, [&](comm::Communicator& c) {
      for (int stage : {2, 3}) {
        const std::string keys = stage == 3 ? R"(, "zero_quantized_weights": true, "zero_quantized_gradients": true)"
                                            : R"(, "zero_quantized_gradients": true)";
        auto json = [&](const std::string& extra) { return test::plain_adamw_config(stage, 2, extra, "", 2 * world); };
        const auto got = test::train_tiny_shape(c.shared_from_this(), json(keys), 8, one_per_scale);
        const auto exact = test::train_tiny_shape(c.shared_from_this(), json(""), 8, {});
        const std::string what = ds::str(world, " ranks, stage ", stage, keys);
        expect_close(got, exact, 1e-5, what + " against the exact run");
        expect_close(got, plain, 1e-5, what + " against the plain loop");
      }
    });
  }
}

TEST(ZeroPlusPlus, HpzOnQuantizedWeightsIsQuantizedWeightsExactly) {
  test::run_ranks(4, [&](comm::Communicator& c) {
    const std::string qw = R"(, "zero_quantized_weights": true)";
    const auto quantized = test::train_tiny(c.shared_from_this(), config(3, 1, qw), 6);
    test::TinyRun run(c.shared_from_this(), config(3, 1, qw + R"(, "zero_hpz_partition_size": 2)"));
    run.train_to(6);
    const auto& stats = run.engine().coordinator()->stats();
    EXPECT_GT(stats.secondary, 0);
    EXPECT_EQ(stats.quantized + stats.secondary, stats.gathers) << "a gather is quantized or from the copies";
    expect_close(run.result(), quantized, 1e-6, "qwZ + hpZ against qwZ");
  });
}

// The resumed engine had trained, been changed by gathered_parameters and evaluated (so its
// secondary copies held other weights) before the load: the load must drop them.
TEST(ZeroPlusPlus, ACheckpointSavedWithAllThreeResumesOnTheUninterruptedRun) {
  test::TempDir dir("zeropp_ckpt");
  const std::string keys =
      R"(, "zero_quantized_weights": true, "zero_quantized_gradients": true, "zero_hpz_partition_size": 2)";
  test::run_ranks(4, [&](comm::Communicator& c) {
    test::TinyRun whole(c.shared_from_this(), config(3, 1, keys));
    whole.train_to(10);
    test::TinyRun first(c.shared_from_this(), config(3, 1, keys));
    first.train_to(5);
    first.engine().save_checkpoint(dir / "at5");
    test::TinyRun second(c.shared_from_this(), config(3, 1, keys));
    second.train_to(3);
    const zero::FlatUnit& unit = second.engine().unit(1);  // other weights than the checkpoint's, in the copies
    second.engine().gathered_parameters({unit.slots()[0].name}, [&] { unit.params().fill_(0.3); }, 0);
    const Batch b = second.data().batch(3, 0, 1);
    {
      at::NoGradGuard no_grad;
      second.engine().forward([&] { return second.model()->loss(b.tokens, b.targets); });
    }
    EXPECT_GT(second.engine().coordinator()->stats().secondary, 0);
    second.engine().load_checkpoint(dir / "at5");
    second.train_to(10);
    const auto a = whole.result(), r = second.result();
    EXPECT_LT(weight_diff(r, a), 1e-6);
    ASSERT_EQ(r.losses.size(), 3u + 5u);
    for (size_t i = 0; i < 5; ++i) EXPECT_NEAR(r.losses[3 + i], a.losses[5 + i], 1e-6) << "step " << 6 + i;
  });
}

// gathered_parameters (and a checkpoint's gathered weights) see the exact weights under qwZ,
// also inside a forward where the unit is held quantized for its backward; a modifier changes
// only what it writes (the others' masters are not rounded to the int8 grid).
TEST(ZeroPlusPlus, ExplicitGathersAreExactAndAModifierChangesOnlyWhatItWrites) {
  test::run_ranks(2, [&](comm::Communicator& c) {
    test::TinyRun run(c.shared_from_this(), config(3, 4, R"(, "zero_quantized_weights": true)"));
    run.train_to(3);
    Engine& engine = run.engine();
    const size_t u = 1;
    const zero::FlatUnit& unit = engine.unit(u);
    const std::string name = unit.slots()[0].name;
    const int64_t first = unit.slots()[0].numel;
    // This rank's chunk of the unit: the exact weights (fp32 stage 3: the master is the shard).
    const comm::Chunk own = comm::chunk_of(unit.padded_numel(), c.size(), c.rank());
    const int64_t mine = std::max<int64_t>(0, std::min(own.offset + own.length, unit.numel()) - own.offset);
    auto exact_part = [&](const at::Tensor& full) { return full.slice(0, own.offset, own.offset + mine); };
    const at::Tensor master = unit.shard_data().slice(0, 0, mine).clone();
    at::Tensor exact, inside;
    engine.gathered_parameters({name}, [&] { exact = unit.params().slice(0, 0, unit.numel()).clone(); });
    EXPECT_TRUE(exact_part(exact).equal(master)) << "a gather between steps";
    const Batch b = run.data().batch(3, c.rank() * 4, 4);
    at::Tensor loss = engine.forward([&] {
      at::Tensor l = run.model()->loss(b.tokens, b.targets);
      EXPECT_TRUE(engine.coordinator()->gathered(int(u))) << "kept for the backward (max_reuse_distance)";
      engine.gathered_parameters({name}, [&] { inside = unit.params().slice(0, 0, unit.numel()).clone(); });
      EXPECT_FALSE(engine.coordinator()->gathered(int(u))) << "the exact weights do not stay for the backward";
      return l;
    });
    engine.backward(loss);
    EXPECT_TRUE(exact_part(inside).equal(master)) << "a gather inside the forward";
    const auto before = run.result();
    engine.gathered_parameters({name}, [&] { unit.params().slice(0, 0, first).fill_(0.5); }, /*modifier_rank=*/0);
    const auto after = run.result();
    // The master: the written parameter's part is 0.5, the rest untouched (not rounded to int8).
    at::Tensor now = unit.shard_data().slice(0, 0, mine);
    const int64_t written = std::max<int64_t>(0, std::min(first - own.offset, mine));
    EXPECT_TRUE(now.slice(0, 0, written).eq(0.5).all().item<bool>());
    EXPECT_TRUE(now.slice(0, written).equal(master.slice(0, written))) << "the unit's other weights, this rank's chunk";
    int64_t at = 0;  // where unit u's first parameter is in the concatenated weights
    for (size_t v = 0; v < u; ++v) at += engine.unit(v).numel();
    EXPECT_TRUE(after.weights.slice(0, at, at + first).eq(0.5).all().item<bool>());
    EXPECT_TRUE(after.weights.slice(0, 0, at).equal(before.weights.slice(0, 0, at)));
    EXPECT_TRUE(after.weights.slice(0, at + first).equal(before.weights.slice(0, at + first)))
        << "the unit's other parameters and the other units are untouched";
  });
}

// Weight shards on disk (offload_param nvme, bf16): qwZ and hpZ gather as they do from memory,
// and the units gathered from the copies read nothing from the disk.
TEST(ZeroPlusPlus, ShardsOnDiskGatherAsFromMemory) {
  test::TempDir dir("ds_swap_zpp", "/tmp");
  const std::string keys = R"(, "zero_quantized_weights": true, "zero_hpz_partition_size": 2)";
  auto json = [&](const std::string& offload) {
    std::string j = config(3, 1, keys + offload);
    return j.insert(j.rfind('}'), R"(, "bf16": {"enabled": true})");
  };
  test::run_ranks(4, [&](comm::Communicator& c) {
    const auto memory = test::train_tiny(c.shared_from_this(), json(""), 6);
    test::TinyRun run(c.shared_from_this(),
                      json(ds::str(R"(, "offload_param": {"device": "nvme", "nvme_path": ")", dir.path(), R"("})")));
    run.train_to(6);
    const zero::ParamCoordinator& pc = *run.engine().coordinator();
    EXPECT_GT(pc.stats().secondary, 0);
    EXPECT_EQ(run.engine().param_swapper()->stats().reads, pc.stats().gathers - pc.stats().secondary)
        << "a shard is read for each gather that is not from the copies, no more";
    expect_close(run.result(), memory, 1e-6, "qwZ + hpZ with the shards on disk");
  });
}

TEST(ZeroPlusPlus, WhatCannotWorkIsRefusedAtStartUpWithTheKey) {
  test::run_ranks(4, [&](comm::Communicator& c) {
    auto refused = [&](const std::string& json) { test::TinyRun run(c.shared_from_this(), json); };
    EXPECT_ERROR_HAS(refused(config(2, 1, R"(, "zero_quantized_weights": true)")),
                     "zero_optimization.zero_quantized_weights needs ZeRO stage 3");
    EXPECT_ERROR_HAS(refused(config(1, 1, R"(, "zero_hpz_partition_size": 2)")),
                     "zero_optimization.zero_hpz_partition_size needs ZeRO stage 3");
    EXPECT_ERROR_HAS(refused(config(3, 1, R"(, "zero_hpz_partition_size": 3)")),
                     "zero_optimization.zero_hpz_partition_size 3 does not divide the 4 data-parallel ranks");
    {  // all 4 data-parallel ranks: a copy would be gathered over the same ranks; hpZ is off (a warning)
      test::TinyRun run(c.shared_from_this(), config(3, 1, R"(, "zero_hpz_partition_size": 4)"));
      EXPECT_EQ(run.engine().plan().hpz, 1);
      EXPECT_THAT(run.engine().plan().hpz_note, ::testing::HasSubstr("is all 4 data-parallel ranks"));
      run.train_to(1);
      EXPECT_EQ(run.engine().coordinator()->stats().secondary, 0);
    }
    EXPECT_ERROR_HAS(refused(config(0, 1, R"(, "zero_quantized_gradients": true)")),
                     "zero_optimization.zero_quantized_gradients needs ZeRO stage 1, 2 or 3");
    EXPECT_ERROR_HAS(refused(R"({"train_batch_size": 8, "train_micro_batch_size_per_gpu": 1,
                                 "optimizer": {"type": "OneBitAdam", "params": {"lr": 0.01, "freeze_step": 2}},
                                 "zero_optimization": {"stage": 1, "zero_quantized_gradients": true}})"),
                     "the 1-bit optimizers compress their own communication");
  });
}
