// Activation checkpointing end to end: the reference GPT recomputing its blocks gives the
// same gradients bit for bit (dropout on), alone and through the engine at ZeRO 0 and 3 on
// 2 ranks (where stage 3 gathers each recomputed block again: counted); the checkpointed
// engine matches a plain LibTorch loop; saved inputs split across a group and kept in one
// contiguous buffer give the same gradients with the memory they promise; bad input.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "ds/common/error.h"
#include "ds/config/config.h"
#include "ds/models/gpt.h"
#include "ds/nn/checkpointing.h"
#include "support/errors.h"
#include "support/ranks.h"
#include "train_util.h"

using namespace ds;

namespace {

std::string config(int stage, int64_t micro, const std::string& extra = "") {
  return ds::str(R"({"train_batch_size": 8, "train_micro_batch_size_per_gpu": )", micro,
                 R"(, "optimizer": {"type": "AdamW", "params": {"lr": 0.01, "weight_decay": 0.01, "eps": 1e-6}},)",
                 R"( "gradient_clipping": 0.5, "zero_optimization": {"stage": )", stage,
                 stage == 3 ? R"(, "stage3_param_persistence_threshold": 0)" : "", "}", extra, "}");
}

// The GPT's parameter gradients after one forward and backward of a fixed batch.
std::vector<at::Tensor> gpt_grads(int64_t checkpoint_blocks, double dropout) {
  GptConfig c;
  c.n_layer = 3, c.n_head = 2, c.d_model = 32, c.seq_len = 16, c.vocab_size = 64;
  c.dropout = dropout, c.checkpoint_blocks = checkpoint_blocks;
  torch::manual_seed(3);
  Gpt model(c);
  at::Tensor tokens = at::randint(64, {4, 16}, at::kLong);
  model->loss(tokens.narrow(1, 0, 15), tokens.narrow(1, 1, 15)).backward();
  std::vector<at::Tensor> grads;
  for (const at::Tensor& p : model->parameters()) grads.push_back(p.grad().clone());
  return grads;
}

void expect_identical(const std::vector<at::Tensor>& a, const std::vector<at::Tensor>& b, const std::string& what) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) EXPECT_TRUE(at::equal(a[i], b[i])) << what << ": parameter " << i;
}

// A checkpointed function with dropout and a parameter, for the mechanism's own tests.
struct Toy {
  at::Tensor w = at::randn({8, 8}).requires_grad_(true);
  at::Tensor run(const at::Tensor& x) { return at::dropout(at::tanh(at::matmul(x, w)), 0.3, true) * 2; }
};

}  // namespace

TEST(ActivationCheckpointing, GptGradientsAreBitIdenticalWithDropout) {
  const auto plain = gpt_grads(0, 0.1);
  expect_identical(gpt_grads(3, 0.1), plain, "every block checkpointed");
  expect_identical(gpt_grads(1, 0.1), plain, "the first block checkpointed");
  // Dropout is really on: another mask gives other gradients.
  EXPECT_FALSE(at::equal(gpt_grads(0, 0.2)[0], plain[0]));
}

TEST(ActivationCheckpointing, EngineRunsAreBitIdenticalAtStages0And3AndStage3CountsTheRegathers) {
  test::run_ranks(2, [](comm::Communicator& c) {
    for (int stage : {0, 3}) {
      test::TinyShape plain, checkpointed;
      plain.dropout = checkpointed.dropout = 0.1;
      checkpointed.checkpoint_blocks = 2;
      const std::string json = config(stage, 2, R"(, "activation_checkpointing": {})");
      test::TinyRun a(c.shared_from_this(), json, plain);
      a.train_to(4);
      const int64_t recomputed = checkpointing::recomputations();
      test::TinyRun b(c.shared_from_this(), json, checkpointed);
      b.train_to(4);
      // 4 steps x 2 micro-batches x 2 blocks
      EXPECT_EQ(checkpointing::recomputations() - recomputed, 16) << "stage " << stage;
      const auto ra = a.result(), rb = b.result();
      EXPECT_EQ(ra.losses, rb.losses) << "stage " << stage;
      EXPECT_TRUE(at::equal(ra.weights, rb.weights)) << "stage " << stage;
      if (stage == 3) {
        // Each checkpointed block is gathered for its recompute in the backward (and kept for
        // its backward right after), so at most one more gather per block and micro-batch.
        const int64_t without = a.engine().coordinator()->stats().gathers;
        const int64_t with = b.engine().coordinator()->stats().gathers;
        EXPECT_GT(with, without);
        EXPECT_LE(with, without + 16);
        if (c.rank() == 0) std::printf("stage 3 all-gathers in 4 steps: %lld without, %lld with checkpointing\n",
                                       (long long)without, (long long)with);
      }
    }
  });
}

TEST(ActivationCheckpointing, TheCheckpointedEngineMatchesAPlainLibTorchLoop) {
  // No dropout: the plain loop (one process, batch 8, no checkpointing) is the reference for
  // 2 ranks x 4 at stage 3 recomputing both blocks.
  const auto ref = test::train_plain_libtorch({}, 8);
  test::run_ranks(2, [&](comm::Communicator& c) {
    test::TinyShape shape;
    shape.checkpoint_blocks = 2;
    const auto run = test::train_tiny_shape(c.shared_from_this(), config(3, 4, R"(, "activation_checkpointing": {})"), 8, shape);
    EXPECT_LT(test::max_abs_diff(run.losses, ref.losses), 1e-5);
    EXPECT_LT((run.weights - ref.weights).abs().masked_fill(ref.key_bias, 0.0).max().item<double>(), 1e-5);
  });
}

TEST(ActivationCheckpointing, PartitionedInputsKeepHalfOnEachRankWithTheSameGradients) {
  test::run_ranks(2, [](comm::Communicator& c) {
    auto grads = [&](bool partition, int64_t* peak) {
      checkpointing::Options o;
      if (partition) {
        o.partition.rank = c.rank(), o.partition.size = c.size();
        o.partition.all_gather = [&c](at::Tensor& out, const at::Tensor& piece) { c.all_gather(out, piece).wait(); };
      }
      checkpointing::configure(o);
      torch::manual_seed(5);  // the same input, weights and masks on both ranks (as in a tensor group)
      Toy toy;
      at::Tensor x = at::randn({6, 8}).requires_grad_(true);  // 48 elements: 24 per rank
      checkpointing::reset_stats();
      at::Tensor y = checkpointing::checkpoint([&](const std::vector<at::Tensor>& in) { return toy.run(in[0]); }, {x});
      *peak = checkpointing::stats().peak_saved_bytes;
      y.pow(2).sum().backward();
      checkpointing::configure({});
      return std::vector<at::Tensor>{x.grad(), toy.w.grad()};
    };
    int64_t whole = 0, half = 0;
    const auto a = grads(false, &whole), b = grads(true, &half);
    expect_identical(a, b, "partitioned");
    EXPECT_EQ(whole, 48 * 4);
    EXPECT_EQ(half, 24 * 4);
    EXPECT_EQ(checkpointing::stats().saved_bytes, 0) << "the saved inputs were not freed by the backward";
  });
}

TEST(ActivationCheckpointing, TheContiguousBufferGivesTheSameGradientsAndRefusesMoreCallsThanSlots) {
  auto grads = [](bool contiguous, int calls) {
    checkpointing::Options o;
    o.contiguous = contiguous, o.number_checkpoints = 2;
    checkpointing::configure(o);
    torch::manual_seed(5);
    Toy toy;
    at::Tensor h = at::randn({6, 8}).requires_grad_(true), x = h;
    for (int i = 0; i < calls; ++i)
      h = checkpointing::checkpoint([&toy](const std::vector<at::Tensor>& in) { return toy.run(in[0]); }, {h});
    h.sum().backward();
    return std::vector<at::Tensor>{x.grad(), toy.w.grad()};
  };
  for (int step = 0; step < 2; ++step)  // the second step reuses the slots the first freed
    expect_identical(grads(true, 2), grads(false, 2), "contiguous");
  EXPECT_ERROR_HAS(grads(true, 3), "more than number_checkpoints = 2 checkpointed calls hold saved inputs at once");
  checkpointing::configure({});
  EXPECT_EQ(checkpointing::stats().saved_bytes, 0);
}

TEST(ActivationCheckpointing, SettingsAreUndoneOnlyByTheirOwner) {
  // An engine undoes its settings when it goes (its partition group must not outlive it), but
  // an older engine going does not undo a newer one's.
  auto three_calls = [] {
    Toy toy;
    at::Tensor h = at::randn({2, 8}).requires_grad_(true);
    for (int i = 0; i < 3; ++i)
      h = checkpointing::checkpoint([&toy](const std::vector<at::Tensor>& in) { return toy.run(in[0]); }, {h});
    h.sum().backward();
  };
  checkpointing::Options contiguous;
  contiguous.contiguous = true, contiguous.number_checkpoints = 2;
  const int64_t older = checkpointing::configure({});
  const int64_t newer = checkpointing::configure(contiguous);
  checkpointing::unconfigure(older);
  EXPECT_ERROR_HAS(three_calls(), "more than number_checkpoints = 2");  // still the newer settings
  checkpointing::unconfigure(newer);
  EXPECT_NO_THROW(three_calls());  // the defaults again
  test::run_ranks(1, [](comm::Communicator& c) {
    {
      test::TinyShape shape;
      shape.checkpoint_blocks = 2;
      const std::string json = config(0, 8, R"(, "activation_checkpointing": {"contiguous_memory_optimization": true, "number_checkpoints": 1})");
      test::TinyRun run(c.shared_from_this(), json, shape);
      EXPECT_ERROR_HAS(run.train_to(1), "more than number_checkpoints = 1");
    }
    Toy toy;  // the engine is gone: its one-slot buffer with it
    at::Tensor h = at::randn({2, 8}).requires_grad_(true);
    for (int i = 0; i < 2; ++i)
      h = checkpointing::checkpoint([&toy](const std::vector<at::Tensor>& in) { return toy.run(in[0]); }, {h});
    EXPECT_NO_THROW(h.sum().backward());
  });
}

TEST(ActivationCheckpointing, BadInputIsOneLine) {
  EXPECT_ERROR_HAS(Config::parse(R"({"train_batch_size": 8, "activation_checkpointing": {"contiguous_memory_optimization": true}})", "t"),
                   "activation_checkpointing.contiguous_memory_optimization: needs number_checkpoints");
  EXPECT_ERROR_HAS(Config::parse(R"({"train_batch_size": 8, "activation_checkpointing": {"number_checkpoints": 0}})", "t"),
                   "number_checkpoints");
  GptConfig c;
  c.checkpoint_blocks = 3;
  EXPECT_ERROR_HAS(c.validate(), "checkpoint_blocks 3 is not between 0 and the 2 layers");
  EXPECT_FALSE(Config::parse(R"({"train_batch_size": 8})", "t").activation_checkpointing.present);
  EXPECT_TRUE(Config::parse(R"({"train_batch_size": 8, "activation_checkpointing": {}})", "t").activation_checkpointing.present);
}
