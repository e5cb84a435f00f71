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
