// Ulysses sequence parallelism: the all-to-all exchanges heads for tokens and back with the
// right gradients, and a GPT whose sequences are split over 2 ranks trains as one process on
// whole sequences and as a plain LibTorch loop does (stages 0-3, with data and tensor
// parallelism); what cannot split is refused with the key's name.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "ds/comm/topology.h"
#include "ds/common/error.h"
#include "ds/config/config.h"
#include "ds/seq/ulysses.h"
#include "support/errors.h"
#include "support/files.h"
#include "support/ranks.h"
#include "train_util.h"

using namespace ds;

namespace {

std::string config(int stage, int64_t micro, const std::string& extra = "") {
  return test::plain_adamw_config(stage, micro, "", extra);
}

void expect_close(const test::TrainResult& run, const test::TrainResult& ref, double tol, const std::string& what) {
  ASSERT_EQ(run.weights.numel(), ref.weights.numel()) << what;
  at::Tensor diff = (run.weights - ref.weights).abs().masked_fill(ref.key_bias, 0.0);
  EXPECT_LT(test::max_abs_diff(run.losses, ref.losses), tol) << what;
  EXPECT_LT(diff.max().item<double>(), tol) << what << " at " << diff.argmax().item<int64_t>();
}

// The reverse task's 16 tokens split into 2 slices of 8, in a model of context 18 (the
// references run the same model in one process).
test::TinyShape shape(int sequence, int64_t heads = 2, int tensor = 1) {
  test::TinyShape s;
  s.sequence = sequence, s.n_head = heads, s.tensor = tensor, s.seq_len = 18;
  return s;
}

}  // namespace

TEST(SequenceParallel, AllToAllExchangesHeadsForTokensAndBack) {
  for (int world : {2, 3}) {
    test::run_ranks(world, [&](comm::Communicator& c) {
      const int64_t B = 2, T = 4 * world, H = 2 * world, hd = 3, t = T / world, h = H / world;
      const int r = c.rank();
      auto g = c.shared_from_this();
      torch::manual_seed(11);  // the same whole tensors on every rank
      const at::Tensor x = at::randn({B, T, H, hd}), w = at::randn({B, T, H, hd});
      at::Tensor mine = x.narrow(1, r * t, t).clone().requires_grad_(true);
      at::Tensor heads = seq::all_to_all(mine, g, 2, 1);  // every token of this rank's heads
      ASSERT_EQ(heads.sizes(), (std::vector<int64_t>{B, T, h, hd}));
      EXPECT_TRUE(at::equal(heads, x.narrow(2, r * h, h))) << "rank " << r;
      EXPECT_TRUE(at::equal(seq::all_to_all(heads, g, 1, 2), mine)) << "the inverse exchange";
      // d/dx of sum over ranks of <x's heads of r, w's heads of r> is w: each rank's token
      // slice of it comes back through the backward exchange.
      (heads * w.narrow(2, r * h, h)).sum().backward();
      EXPECT_TRUE(at::allclose(mine.grad(), w.narrow(1, r * t, t))) << "rank " << r;
      // slice and gather are inverses, gradients included.
      at::Tensor whole = x.clone().requires_grad_(true);
      at::Tensor part = seq::slice(whole, g, 1);
      EXPECT_TRUE(at::equal(part, x.narrow(1, r * t, t)));
      EXPECT_TRUE(at::equal(seq::gather(part, g, 1), x));
      (part * w.narrow(1, r * t, t)).sum().backward();
      EXPECT_TRUE(at::allclose(whole.grad(), w)) << "the slices' gradients joined";
      EXPECT_EQ(seq::first_position(t, g), r * t);
      EXPECT_ERROR_HAS(seq::all_to_all(at::zeros({B, T + 1, H, hd}), g, 1, 2), "does not divide over");
    });
  }
}

TEST(SequenceParallel, TwoRanksTrainAsOneProcessOnWholeSequencesAtEveryStage) {
  // 10 steps of AdamW with clipping. The reverse task's loss is on the answer only: the first
  // slice of each example counts no target, the second 8, so a plain mean of the ranks' means
  // would halve the loss; gpt_loss weighs them by their counts.
  const auto plain = test::train_plain_libtorch({}, 10, shape(1));
  EXPECT_LT(plain.losses.back(), plain.losses.front() - 0.5) << "the reference did not learn";
  const auto one = test::train_tiny_shape(test::solo(), config(0, 8), 10, shape(1));
  expect_close(one, plain, 1e-5, "1 process against the plain loop");
  test::run_ranks(2, [&](comm::Communicator& c) {
    for (int stage : {0, 1, 2, 3}) {
      test::TinyRun run(c.shared_from_this(), config(stage, 8, R"(, "sequence_parallel_size": 2)"), shape(2));
      EXPECT_EQ(run.engine().sp_size(), 2);
      EXPECT_EQ(run.engine().sample_ranks(), 1);
      EXPECT_EQ(run.engine().dp_size(), 2) << "ZeRO shards over the sequence ranks too";
      run.train_to(10);
      const auto got = run.result();
      expect_close(got, one, 1e-5, ds::str("sequence 2, stage ", stage, " against 1 process"));
      expect_close(got, plain, 1e-5, ds::str("sequence 2, stage ", stage, " against the plain loop"));
    }
  });
}

TEST(SequenceParallel, ComposesWithDataAndTensorParallelism) {
  // 4 ranks: sequence 2 x data 2 (ZeRO-2, each pair reads its half of the batch), and
  // sequence 2 x tensor 2 (4 heads: 2 per tensor rank, 1 per sequence rank in attention).
  const auto one = test::train_tiny_shape(test::solo(), config(0, 8), 8, shape(1));
  const auto one4 = test::train_tiny_shape(test::solo(), config(0, 8), 8, shape(1, 4));
  test::run_ranks(4, [&](comm::Communicator& c) {
    {
      test::TinyRun run(c.shared_from_this(), config(2, 4, R"(, "sequence_parallel_size": 2)"), shape(2));
      EXPECT_EQ(run.engine().sample_ranks(), 2);
      EXPECT_EQ(run.engine().sample_rank(), c.rank() / 2);
      run.train_to(8);
      // Four ranks average in another order than one: Adam turns that into ~3e-5 on a few weights.
      expect_close(run.result(), one, 1e-4, "sequence 2 x data 2, stage 2");
    }
    {
      test::TinyRun run(c.shared_from_this(),
                        config(1, 8, R"(, "sequence_parallel_size": 2, "tensor_parallel": {"autotp_size": 2})"),
                        shape(2, 4, 2));
      run.train_to(8);
      EXPECT_LT(test::max_abs_diff(run.result().losses, one4.losses), 1e-5) << "sequence 2 x tensor 2, stage 1";
    }
  });
  // 3 ranks: the 16 tokens padded to 18 (token 0, target -1 at the end), 6 per rank, 1 of 3 heads.
  test::TinyShape three = shape(3, 3);
  three.d_model = 48;
  test::TinyShape alone = three;
  alone.sequence = 1;
  const auto ref = test::train_tiny_shape(test::solo(), config(0, 8), 8, alone);
  test::run_ranks(3, [&](comm::Communicator& c) {
    const auto got =
        test::train_tiny_shape(c.shared_from_this(), config(2, 8, R"(, "sequence_parallel_size": 3)"), 8, three);
    expect_close(got, ref, 1e-5, "sequence 3 (padded), stage 2");
  });
}

TEST(SequenceParallel, WhatCannotSplitIsRefusedWithTheKey) {
  auto resolve = [](const std::string& json, int world) {
    Config c = Config::parse(json);
    c.resolve(world);
    return c;
  };
  EXPECT_ERROR_HAS(resolve(config(0, 4, R"(, "sequence_parallel_size": 3)"), 2), "sequence_parallel_size");
  EXPECT_ERROR_HAS(resolve(config(0, 4, R"(, "sequence_parallel_size": 0)"), 2), "sequence_parallel_size");
  // 4 ranks in pairs: 2 sample ranks x micro 4 = 8.
  const Config ok = resolve(config(0, 4, R"(, "sequence_parallel_size": 2)"), 4);
  EXPECT_EQ(ok.parallel.data_parallel_size, 2);
  EXPECT_EQ(ok.parallel.zero_group_size(), 4);
  EXPECT_ERROR_HAS(resolve(config(0, 8, R"(, "sequence_parallel_size": 2)"), 4), "sequence_parallel_size 2");
  EXPECT_EQ(comm::Topology(1, 4, 1, 2).sequence_group(3), (std::vector<int>{2, 3}));
  EXPECT_EQ(comm::Topology(2, 2, 2, 2).sequence_group(5), (std::vector<int>{5, 7}));
  EXPECT_ERROR_HAS(comm::Topology(1, 3, 1, 2), "does not divide");

  test::run_ranks(2, [&](comm::Communicator& c) {
    Config cfg = resolve(config(0, 8, R"(, "sequence_parallel_size": 2)"), 2);
    auto groups = comm::ParallelGroups::create(c.shared_from_this(), comm::Topology::for_world(2, 1, 1, 2));
    GptConfig mc;
    mc.n_layer = 1, mc.n_head = 2, mc.d_model = 16, mc.seq_len = 18;
    // A model that does not split its sequences would attend within each slice only.
    EXPECT_ERROR_HAS(Engine(Gpt(mc).ptr(), cfg, groups), "the model splits its sequences over 1 ranks");
    // Without the key, a model built with the group is refused as well.
    EXPECT_ERROR_HAS(Engine(Gpt(mc, nullptr, groups.sequence).ptr(), resolve(config(0, 4), 2), c.shared_from_this()),
                     "sequence_parallel_size is 1 but the model splits its sequences over 2 ranks");
    mc.n_head = 1;
    EXPECT_ERROR_HAS(Gpt(mc, nullptr, groups.sequence), "does not divide the 1 heads");
    mc.n_head = 2;
    Gpt model(mc, nullptr, groups.sequence);
    EXPECT_ERROR_HAS(model->forward(at::zeros({1, 10}, at::kLong)), "a sequence of 20 tokens, which exceeds the model's context of 18");
  });
}

TEST(SequenceParallel, PaddedSlicesGatherToTheWholeSequencesLogits) {
  // What ds-train's evaluation does: 16 tokens padded to 18 (token 0, target -1), a slice of 6
  // on each of 3 ranks, the slices' logits gathered and the padding cut off: the logits of one
  // process on the unpadded tokens.
  GptConfig mc;
  mc.n_layer = 2, mc.n_head = 3, mc.d_model = 24, mc.seq_len = 18;
  auto data = make_task("reverse", 5);
  const Batch b = data->held_out(4);
  ASSERT_EQ(b.tokens.size(1), 16);
  torch::manual_seed(3);
  const at::Tensor want = Gpt(mc)->forward(b.tokens);
  test::run_ranks(3, [&](comm::Communicator& c) {
    auto groups = comm::ParallelGroups::create(c.shared_from_this(), comm::Topology::for_world(3, 1, 1, 3));
    torch::manual_seed(3);
    Gpt model(mc, nullptr, groups.sequence);
    const Batch padded = pad_sequences(b, 3);
    ASSERT_EQ(padded.tokens.size(1), 18);
    EXPECT_TRUE(at::all(padded.targets.narrow(1, 16, 2) == -1).item<bool>());
    const Batch mine = sequence_slice(b, c.rank(), 3);
    EXPECT_TRUE(at::equal(mine.tokens, padded.tokens.narrow(1, 6 * c.rank(), 6)));
    const at::Tensor got = seq::gather(model->forward(mine.tokens), groups.sequence, 1).narrow(1, 0, 16);
    EXPECT_TRUE(at::allclose(got, want, 1e-5, 1e-5)) << (got - want).abs().max().item<double>();
    // The loss of the slices, weighed by their counts, is the whole sequences' mean.
    const double loss = model->loss(mine.tokens, mine.targets).item<double>();
    at::Tensor mean = at::full({1}, loss, at::kDouble);
    groups.sequence->all_reduce(mean, comm::ReduceOp::Avg).wait();
    EXPECT_NEAR(mean.item<double>(), gpt_loss(want, b.targets).item<double>(), 1e-5);
  });
}

TEST(SequenceParallel, CheckpointsMoveBetweenSequenceRanksAndOneProcess) {
  // A sequence-parallel checkpoint is a data-parallel one over data x sequence ranks: 2
  // sequence ranks at ZeRO-2 save at step 5 and one process resumes; one process saves and 2
  // sequence ranks resume at ZeRO-3. Both follow the 1-process run of 10 steps.
  test::TempDir dir("ds_sp_ckpt");
  const std::string sp2 = R"(, "sequence_parallel_size": 2)";
  const auto one = test::train_tiny_shape(test::solo(), config(0, 8), 10, shape(1));
  auto expect_tail = [&](const test::TrainResult& got, const std::string& what) {
    ASSERT_EQ(got.losses.size(), 5u) << what;
    test::TrainResult tail = one;
    tail.losses.assign(one.losses.begin() + 5, one.losses.end());
    expect_close(got, tail, 1e-5, what);
  };
  test::run_ranks(2, [&](comm::Communicator& c) {
    test::TinyRun run(c.shared_from_this(), config(2, 8, sp2), shape(2));
    run.train_to(5);
    run.engine().save_checkpoint(dir / "sp");
  });
  test::TinyRun resumed(test::solo(), config(0, 8), shape(1));
  resumed.engine().load_checkpoint(dir / "sp");
  resumed.train_to(10);
  expect_tail(resumed.result(), "2 sequence ranks -> 1 process");

  test::TinyRun first(test::solo(), config(0, 8), shape(1));
  first.train_to(5);
  first.engine().save_checkpoint(dir / "one");
  test::run_ranks(2, [&](comm::Communicator& c) {
    test::TinyRun run(c.shared_from_this(), config(3, 8, sp2), shape(2));
    run.engine().load_checkpoint(dir / "one");
    run.train_to(10);
    expect_tail(run.result(), "1 process -> 2 sequence ranks at ZeRO-3");
  });
}
