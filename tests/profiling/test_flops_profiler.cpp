// The flops profiler: each op's price against its closed form, whole LibTorch models against
// hand counts, the reference GPT against 6N + 12LTd, the module tree, parameters and
// latencies, and the backward of checkpointed blocks (their recomputed forward counted).
#include "ds/profiling/flops_profiler.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "ds/models/gpt.h"
#include "ds/nn/checkpointing.h"

namespace ds::profiling {
namespace {

OpCost cost(const std::string& op, const std::vector<c10::IValue>& inputs) {
  return op_cost(op, c10::ArrayRef<const c10::IValue>(inputs.data(), inputs.size()));
}

TEST(OpCost, MatmulsCountTwoFlopsPerMultiplyAdd) {
  const auto a = at::zeros({6, 8}), b = at::zeros({8, 4});
  OpCost c = cost("aten::mm", {a, b});
  EXPECT_TRUE(c.known);
  EXPECT_EQ(c.macs, 6 * 8 * 4);
  EXPECT_EQ(c.flops, 2 * 6 * 8 * 4);
  EXPECT_EQ(cost("aten::addmm", {at::zeros({4}), a, b}).macs, 6 * 8 * 4);
  EXPECT_EQ(cost("aten::bmm", {at::zeros({3, 6, 8}), at::zeros({3, 8, 4})}).macs, 3 * 6 * 8 * 4);
  // matmul broadcasts the batch dimensions: [2, 1, 6, 8] @ [5, 8, 4] is 2 x 5 products
  EXPECT_EQ(cost("aten::matmul", {at::zeros({2, 1, 6, 8}), at::zeros({5, 8, 4})}).macs, 10 * 6 * 8 * 4);
  EXPECT_EQ(cost("aten::matmul", {at::zeros({8}), at::zeros({8, 4})}).macs, 8 * 4);  // vector @ matrix
  // linear: x [2, 3, 8], weight [4, 8] -> 6 rows of 8 x 4
  EXPECT_EQ(cost("aten::linear", {at::zeros({2, 3, 8}), at::zeros({4, 8}), at::zeros({4})}).macs, 6 * 8 * 4);
}

TEST(OpCost, ConvolutionsMatchTheirOutputShape) {
  torch::nn::Conv2d conv(torch::nn::Conv2dOptions(3, 8, 3).stride(2).padding(1).groups(1));
  const at::Tensor x = at::randn({2, 3, 17, 15});
  const at::Tensor y = conv(x);  // LibTorch computes the output shape; each element is a dot of 3 x 3 x 3
  const double expected = double(y.numel()) * 3 * 3 * 3;
  EXPECT_EQ(cost("aten::conv2d", {x, conv->weight, conv->bias, std::vector<int64_t>{2}, std::vector<int64_t>{1},
                                        std::vector<int64_t>{1}, int64_t(1)})
                .macs,
            expected);
  torch::nn::Conv1d grouped(torch::nn::Conv1dOptions(4, 6, 5).groups(2).dilation(2));
  const at::Tensor x1 = at::randn({1, 4, 30});
  const at::Tensor y1 = grouped(x1);
  EXPECT_EQ(cost("aten::conv1d", {x1, grouped->weight, grouped->bias, std::vector<int64_t>{1},
                                        std::vector<int64_t>{0}, std::vector<int64_t>{2}, int64_t(2)})
                .macs,
            double(y1.numel()) * 2 * 5);  // 4 / 2 input channels per group
}

TEST(OpCost, ElementwiseOpsCountTheBroadcastOutputAndViewsAreNotPriced) {
  EXPECT_EQ(cost("aten::add", {at::zeros({4, 1}), at::zeros({1, 5}), 1.0}).flops, 20);
  EXPECT_EQ(cost("aten::gelu", {at::zeros({3, 7}), std::string("none")}).flops, 21);
  EXPECT_EQ(cost("aten::layer_norm", {at::zeros({2, 10})}).flops, 100);
  EXPECT_EQ(cost("aten::sum", {at::zeros({6, 6})}).flops, 36);
  EXPECT_EQ(cost("aten::embedding", {at::zeros({10, 4}), at::zeros({3}, at::kLong)}).flops, 0);
  EXPECT_TRUE(cost("aten::embedding", {at::zeros({10, 4}), at::zeros({3}, at::kLong)}).known);
  EXPECT_FALSE(cost("aten::view", {at::zeros({4})}).known);
  EXPECT_FALSE(cost("aten::transpose", {at::zeros({4, 4}), int64_t(0), int64_t(1)}).known);
}

// A plain LibTorch MLP without scopes: everything counts to the root; the backward's matmuls
// are the two products per weight (and none for the input, which needs no gradient).
TEST(FlopsProfiler, APlainLibTorchModelIsCountedExactly) {
  torch::nn::Sequential mlp(torch::nn::Linear(16, 32), torch::nn::ReLU(), torch::nn::Linear(32, 8));
  const at::Tensor x = at::randn({5, 16});
  FlopsProfiler profiler(mlp.ptr(), "mlp");
  profiler.start();
  mlp->forward(x).sum().backward();
  profiler.stop();
  const Profile p = profiler.profile();
  const double fwd_macs = 5.0 * (16 * 32 + 32 * 8);
  EXPECT_EQ(p.forward_macs, fwd_macs);
  // weight gradients of both layers, the input gradient of the second only
  EXPECT_EQ(p.backward_macs, 5.0 * (16 * 32 + 32 * 8) + 5.0 * 32 * 8);
  ASSERT_EQ(p.modules.size(), 1u);
  EXPECT_EQ(p.modules[0].name, "mlp");
  EXPECT_EQ(p.modules[0].params, 16 * 32 + 32 + 32 * 8 + 8);
  EXPECT_GT(p.forward_flops, 2 * fwd_macs);  // at most the biases, the ReLU and the sum besides
  EXPECT_LE(p.forward_flops, 2 * fwd_macs + 5.0 * (32 + 8) + 5.0 * 32 + 5.0 * 8);
}

GptConfig shape(int64_t layers, int64_t d, int64_t heads, int64_t seq, int64_t vocab) {
  GptConfig c;
  c.n_layer = layers, c.d_model = d, c.n_head = heads, c.seq_len = seq, c.vocab_size = vocab;
  return c;
}

Profile profile_gpt(const GptConfig& c, int64_t batch, int64_t context, bool backward) {
  torch::manual_seed(3);
  Gpt model(c);
  const at::Tensor tokens = at::randint(c.vocab_size, {batch, context}, at::kLong);
  FlopsProfiler profiler(model.ptr());
  profiler.start();
  at::Tensor loss = model->loss(tokens, tokens);
  if (backward) loss.backward();
  profiler.stop();
  return profiler.profile();
}

const ModuleStats* find(const Profile& p, const std::string& name) {
  for (const auto& m : p.modules)
    if (m.name == name) return &m;
  return nullptr;
}

// The matmuls of the forward, by hand: per token and layer qkv (3d^2), scores and weighted
// values (T d each, every head's T x hd), the projection (d^2), the MLP (8 d^2); the head (d V).
TEST(FlopsProfiler, TheGptForwardMatmulsAreTheHandCountAndTheTreeNamesEveryBlock) {
  const GptConfig c = shape(2, 64, 4, 48, 96);
  const int64_t B = 3, T = 40, d = c.d_model;
  const Profile p = profile_gpt(c, B, T, false);
  const double per_token = double(c.n_layer) * (12.0 * d * d + 2.0 * T * d) + double(d * c.vocab_size);
  EXPECT_EQ(p.forward_macs, per_token * B * T);
  EXPECT_EQ(p.backward_flops, 0);
  EXPECT_EQ(p.modules[0].params, c.parameter_count());
  for (const char* name : {"wte", "wpe", "blocks.0", "blocks.1", "blocks.0.ln1", "blocks.0.attn", "blocks.0.ln2",
                           "blocks.0.mlp", "ln_f", "lm_head", "loss"})
    EXPECT_NE(find(p, name), nullptr) << name;
  const ModuleStats* block = find(p, "blocks.1");
  ASSERT_NE(block, nullptr);
  EXPECT_EQ(block->depth, 1);
  EXPECT_EQ(block->params, 12 * d * d + 13 * d);  // qkv, projection, MLP weights and biases, two LayerNorms
  EXPECT_EQ(block->macs, (12.0 * d * d + 2.0 * T * d) * B * T);
  EXPECT_EQ(find(p, "blocks.1.mlp")->macs, 8.0 * d * d * B * T);
  EXPECT_EQ(find(p, "blocks.1.attn")->depth, 2);
  EXPECT_EQ(find(p, "lm_head")->params, c.vocab_size * d);  // the tied token embedding, counted where it is read
  EXPECT_EQ(find(p, "wte")->params, c.vocab_size * d);
  EXPECT_EQ(find(p, "blocks.0")->calls, 1);
}

// Training FLOPs per token: 6N + 12LTd, where N leaves out the position embedding (a lookup,
// no arithmetic). The LayerNorms, biases, softmax and GELU add the small rest.
// (Dense attention: the closed form counts every score, as LibTorch's dense path computes them.)
TEST(FlopsProfiler, TheGptTrainingFlopsAreTheClosedFormWithinOnePercent) {
  GptConfig c = shape(2, 128, 4, 128, 256);
  c.dense_attention = true;
  const int64_t B = 2, T = 128;
  const Profile p = profile_gpt(c, B, T, true);
  const double n = double(c.parameter_count() - c.seq_len * c.d_model);
  const double closed = 6.0 * n + 12.0 * double(c.n_layer * T * c.d_model);
  const double measured = (p.forward_flops + p.backward_flops) / double(B * T);
  EXPECT_NEAR(measured / closed, 1.0, 0.01) << measured << " vs " << closed;
  EXPECT_NEAR(p.backward_flops / p.forward_flops, 2.0, 0.05);
}

// The reference GPT-2 124M: GptConfig::flops_per_token (6N + 12LTd, N with every parameter)
// within 1%, at context 256 of the 1024 it is built for.
TEST(FlopsProfiler, Gpt2SmallTrainingFlopsMatchFlopsPerTokenWithinOnePercent) {
  GptConfig c = shape(12, 768, 12, 1024, 50257);
  c.dense_attention = true;
  const int64_t T = 256;
  const Profile p = profile_gpt(c, 1, T, true);
  const double measured = (p.forward_flops + p.backward_flops) / double(T);
  EXPECT_NEAR(measured / c.flops_per_token(T), 1.0, 0.01) << measured << " vs " << c.flops_per_token(T);
}

// The block kernels (the GPT's default attention) report the tiles they compute: causal at
// context 128 in blocks of 64, 3 of the 4 tiles, two GEMMs each forward and five backward
// (the scores are recomputed).
TEST(FlopsProfiler, TheBlockKernelsCountTheTilesTheyCompute) {
  const GptConfig c = shape(1, 64, 4, 128, 96);
  const int64_t B = 2, d = c.d_model;
  const Profile p = profile_gpt(c, B, 128, true);
  const double tile_macs = double(B) * 3 * 64 * 64 * double(d);  // every head's tiles x its width
  EXPECT_EQ(p.forward_flops_by_op.at("ds::block_sparse_attention"), 2 * 2 * tile_macs);
  EXPECT_EQ(p.backward_flops_by_op.at("ds::block_sparse_attention_backward"), 2 * 5 * tile_macs);
  EXPECT_EQ(p.forward_flops_by_op.count("aten::matmul"), 0u);  // no dense scores
}

// A module's latency is the time inside its scope: the blocks and the rest sum to nearly the
// whole forward (what lies outside every scope: the embeddings' sum).
TEST(FlopsProfiler, TopLevelLatenciesSumToTheForward) {
  const GptConfig c = shape(2, 128, 4, 64, 256);
  torch::manual_seed(3);
  Gpt model(c);
  const at::Tensor tokens = at::randint(c.vocab_size, {4, 64}, at::kLong);
  model->loss(tokens, tokens);  // warm-up
  FlopsProfiler profiler(model.ptr());
  profiler.start();
  model->loss(tokens, tokens);
  profiler.stop();
  const Profile p = profiler.profile();
  double sum = 0;
  for (size_t child : p.modules[0].children) sum += p.modules[child].latency_s;
  EXPECT_GT(p.elapsed_s, 0);
  EXPECT_LE(sum, p.elapsed_s);
  EXPECT_GE(sum, 0.9 * p.elapsed_s) << sum << " of " << p.elapsed_s;
}

// A checkpointed block's forward runs again in the backward: its MACs move into the
// backward's count, exactly, and the forward's tree is the same.
TEST(FlopsProfiler, CheckpointedBlocksAddTheirRecomputedForwardToTheBackward) {
  GptConfig c = shape(3, 64, 4, 32, 96);
  const Profile plain = profile_gpt(c, 2, 32, true);
  c.checkpoint_blocks = 2;
  const Profile checkpointed = profile_gpt(c, 2, 32, true);
  EXPECT_EQ(checkpointed.forward_macs, plain.forward_macs);
  EXPECT_EQ(checkpointed.backward_macs - plain.backward_macs, find(plain, "blocks.0")->macs + find(plain, "blocks.1")->macs);
  EXPECT_EQ(checkpointed.modules.size(), plain.modules.size());
}

TEST(FlopsProfiler, TheReportNamesTheTotalsTheTopModulesAndTheTree) {
  const Profile p = profile_gpt(shape(2, 64, 4, 32, 96), 2, 32, true);
  ReportOptions o;
  o.step = 2, o.top_modules = 2, o.module_depth = 1, o.micro_batch = 2, o.tokens_per_sample = 32;
  o.backward_s = 0.01, o.optimizer_s = 0.001, o.iteration_s = 0.02, o.gemm_flops_per_s = 1e11, o.gemm_description = "test";
  const std::string r = format_profile(p, o);
  for (const char* part : {"Profile Summary at step 2", "fwd MACs per rank:", "bwd flops per rank (counted):",
                           "model FLOPs utilisation (MFU)", "Top 2 modules", "depth 1:", "Detailed Profile per rank",
                           "  blocks.0 ("})
    EXPECT_NE(r.find(part), std::string::npos) << part << "\n" << r;
  EXPECT_EQ(r.find("    attn ("), std::string::npos) << "module_depth 1 stops above the blocks' parts\n" << r;
  EXPECT_EQ(si(256), "256");
  EXPECT_EQ(si(0, "MACs"), "0 MACs");
  EXPECT_EQ(si(1.2345e9, "FLOPS"), "1.23 GFLOPS");
}

TEST(FlopsProfiler, TwoProfilersCannotCountOnOneThread) {
  torch::nn::Linear lin(4, 4);
  FlopsProfiler a(lin.ptr()), b(lin.ptr());
  a.start();
  EXPECT_THROW(b.start(), std::exception);
  a.stop();
  b.start();
  b.stop();
}

}  // namespace
}  // namespace ds::profiling
