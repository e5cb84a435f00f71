// The reference GPT: the GPT-2 124M shape builds with the right parameter count, attention
// is causal, the head is tied to the embedding, and impossible shapes are refused.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/utils.h>

#include "ds/models/gpt.h"
#include "ds/zero/flat_unit.h"
#include "support/errors.h"

namespace {
int64_t numel_of(ds::Gpt& m) {
  int64_t n = 0;
  for (const auto& p : m->parameters()) n += p.numel();
  return n;
}
}  // namespace

TEST(Gpt, Gpt2SmallShapeBuildsWith124MParameters) {
  ds::GptConfig c;
  c.vocab_size = 50257, c.n_layer = 12, c.n_head = 12, c.d_model = 768, c.seq_len = 1024;
  ds::Gpt m(c);
  EXPECT_EQ(c.parameter_count(), 124'439'808);  // GPT-2 small with a tied head
  EXPECT_EQ(numel_of(m), c.parameter_count());
  auto units = ds::zero::find_units(*m);
  EXPECT_EQ(units.size(), 2u + 12u + 1u);  // wte, wpe, 12 blocks, ln_f
}

TEST(Gpt, AttentionIsCausal) {
  ds::GptConfig c;
  c.n_layer = 2, c.n_head = 2, c.d_model = 32, c.seq_len = 12;
  torch::manual_seed(3);
  ds::Gpt m(c);
  torch::NoGradGuard no_grad;
  at::Tensor x = at::randint(0, 256, {2, 12}, at::kLong);
  at::Tensor y = x.clone();
  y.index_put_({at::indexing::Slice(), 8}, (x.select(1, 8) + 1) % 256);  // change token 8 only
  at::Tensor a = m->forward(x), b = m->forward(y);
  EXPECT_EQ(a.sizes(), (std::vector<int64_t>{2, 12, 256}));
  EXPECT_TRUE(at::allclose(a.slice(1, 0, 8), b.slice(1, 0, 8), 0, 0)) << "positions before 8 saw token 8";
  EXPECT_FALSE(at::allclose(a.slice(1, 8), b.slice(1, 8)));
}

TEST(Gpt, HeadIsTiedToTheTokenEmbedding) {
  ds::GptConfig c;
  c.n_layer = 1, c.n_head = 1, c.d_model = 8, c.seq_len = 4;
  ds::Gpt m(c);
  auto params = m->named_parameters();
  EXPECT_FALSE(params.contains("lm_head.weight"));
  EXPECT_EQ(numel_of(m), c.parameter_count());
}

TEST(Gpt, ImpossibleShapesAreConfigErrors) {
  ds::GptConfig c;
  c.n_head = 3, c.d_model = 128;
  EXPECT_ERROR_HAS(ds::Gpt{c}, "d_model 128 is not divisible by n_head 3");
  c = ds::GptConfig{};
  c.n_layer = 0;
  EXPECT_ERROR_HAS(ds::Gpt{c}, "n_layer must be >= 1");
  c = ds::GptConfig{};
  ds::Gpt m(c);
  EXPECT_ERROR_HAS(m->forward(at::zeros({1, c.seq_len + 1}, at::kLong)), "exceeds the model's context");
}

namespace {

ds::GptConfig small_gpt() {
  ds::GptConfig c;
  c.n_layer = 2, c.n_head = 4, c.d_model = 32, c.seq_len = 64, c.vocab_size = 50;
  return c;
}

// Loss and every parameter's gradient of a GPT built with seed 5.
std::pair<double, std::vector<at::Tensor>> loss_and_grads(const ds::GptConfig& c, const at::Tensor& x, const at::Tensor& y) {
  torch::manual_seed(5);
  ds::Gpt gpt(c);
  at::Tensor loss = gpt->loss(x, y);
  loss.backward();
  std::vector<at::Tensor> grads;
  for (const auto& p : gpt->parameters()) grads.push_back(p.grad().clone());
  return {loss.item<double>(), grads};
}

}  // namespace

// The block-sparse path with the dense layout is exact causal attention: the same loss and
// gradients as the dense path; a sparse layout gives another loss (the blocks are dropped).
TEST(Gpt, SparseAttentionWithTheDenseLayoutEqualsDenseAttention) {
  torch::manual_seed(1);
  const at::Tensor x = at::randint(50, {3, 64}), y = at::randint(50, {3, 64});
  ds::GptConfig plain = small_gpt();
  plain.dense_attention = true;
  const auto dense = loss_and_grads(plain, x, y);
  ds::GptConfig c = small_gpt();
  c.sparse.enabled = true, c.sparse.mode = ds::SparseMode::kDense, c.sparse.block = 16;
  const auto blocks = loss_and_grads(c, x, y);
  EXPECT_NEAR(blocks.first, dense.first, 1e-5);
  for (size_t i = 0; i < dense.second.size(); ++i)
    EXPECT_LT((blocks.second[i] - dense.second[i]).abs().max().item<double>(), 1e-5) << "parameter " << i;
  c.sparse.mode = ds::SparseMode::kBSLongformer, c.sparse.num_sliding_window_blocks = 1;
  EXPECT_GT(std::abs(loss_and_grads(c, x, y).first - dense.first), 1e-4);
  EXPECT_NE(c.describe().find("bslongformer sparse attention in blocks of 16"), std::string::npos) << c.describe();
}

// Without sparse attention the GPT computes exact causal attention through the block kernels
// (blocks of 64; a context of 100 ends in a partial block, one of 40 is a single block): the
// same loss and gradients as LibTorch's dense attention (dense_attention), which dropout
// still selects. The start-up line says which.
TEST(Gpt, ExactBlockAttentionEqualsDenseAttentionAndDropoutSelectsDense) {
  for (const int64_t T : {100, 40, 128}) {
    torch::manual_seed(2);
    ds::GptConfig c = small_gpt();
    c.seq_len = T;
    const at::Tensor x = at::randint(50, {2, T}), y = at::randint(50, {2, T});
    ASSERT_EQ(c.attention_path(), ds::GptConfig::AttentionPath::kExactBlocks);
    EXPECT_NE(c.describe_attention().find(ds::str("exact causal attention in blocks of ", std::min<int64_t>(T, 64))),
              std::string::npos) << c.describe_attention();
    const auto blocks = loss_and_grads(c, x, y);
    c.dense_attention = true;
    EXPECT_NE(c.describe_attention().find("dense attention"), std::string::npos) << c.describe_attention();
    const auto dense = loss_and_grads(c, x, y);
    EXPECT_NEAR(blocks.first, dense.first, 1e-5) << "T " << T;
    for (size_t i = 0; i < dense.second.size(); ++i)
      EXPECT_LT((blocks.second[i] - dense.second[i]).abs().max().item<double>(), 1e-5) << "T " << T << " parameter " << i;
  }
  ds::GptConfig d = small_gpt();
  d.dropout = 0.1;
  EXPECT_EQ(d.attention_path(), ds::GptConfig::AttentionPath::kDense);
  EXPECT_NE(d.describe_attention().find("dropout on attention probabilities needs it"), std::string::npos);
}

TEST(Gpt, SparseAttentionSettingsTheModelCannotHoldAreConfigErrors) {
  ds::GptConfig c = small_gpt();
  c.sparse.enabled = true, c.sparse.block = 24;
  EXPECT_ERROR_HAS(c.validate(), "the sequence length 64 is not a multiple of block 24");
  c.sparse.block = 16, c.dropout = 0.1;
  EXPECT_ERROR_HAS(c.validate(), "the block-sparse path has no attention-probability dropout");
  c.dropout = 0.0, c.dense_attention = true;
  EXPECT_ERROR_HAS(c.validate(), "dense_attention (ds-train --dense-attention) contradicts the sparse_attention section");
}
