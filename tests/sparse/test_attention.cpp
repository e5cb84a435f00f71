// Block-sparse attention (the fused kernels) against plain LibTorch attention with the
// equivalent dense mask: outputs and the gradients of q, k and v within 1e-5 (fp32) for every
// mode, uni- and bidirectional, blocks 16, 32 and 64, 1-8 heads, sequence lengths that are
// not a power of two, up to 4096 (the long ones labelled slow), a partial last block; key
// padding and an additive mask; queries with no key left give zeros, not NaN; finite
// differences in double precision; bf16 inputs.
#include "ds/sparse/attention.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <limits>

#include "ds/sparse/layout.h"
#include "sparse/reference.h"
#include "support/errors.h"

namespace ds::sparse {
namespace {

using test::expect_close;
using test::Grads;
using test::mode;
using test::reference;
using test::run;

TEST(BlockSparseAttention, MatchesDenseAttentionWithTheSameMaskInEveryMode) {
  torch::manual_seed(3);
  const int64_t T = 192;  // 12 blocks of 16, 6 of 32, 3 of 64
  for (int64_t block : {16, 32, 64})
    for (int64_t heads : {1, 3, 8})
      for (SparseMode m : {SparseMode::kDense, SparseMode::kFixed, SparseMode::kVariable, SparseMode::kBigBird,
                           SparseMode::kBSLongformer})
        for (SparseDirection dir : {SparseDirection::kBidirectional, SparseDirection::kUnidirectional}) {
          SparseAttentionConfig c = mode(m, dir);
          c.block = block;
          const at::Tensor layout = make_layout(c, heads, T, 11);
          if (block == 16 && m != SparseMode::kDense) {
            ASSERT_LT(density(layout), 0.9) << sparse_mode_name(m);  // the test sees masking
          }
          const bool causal = dir == SparseDirection::kUnidirectional;
          const at::Tensor q = at::randn({2, heads, T, 16}), k = at::randn({2, heads, T, 16}), v = at::randn({2, heads, T, 16});
          const at::Tensor dy = at::randn({2, heads, T, 16});
          AttentionOptions o;
          o.causal = causal;
          at::Tensor allowed = token_mask(layout, block).unsqueeze(0);
          if (causal) allowed = allowed & at::ones({T, T}, at::kBool).tril();
          const std::string what = ds::str(sparse_mode_name(m), causal ? " causal" : "", " block ", block, " heads ", heads);
          expect_close(run(q, k, v, dy, [&](auto& a, auto& b, auto& d) { return block_sparse_attention(a, b, d, layout, block, o); }),
                       run(q, k, v, dy, [&](auto& a, auto& b, auto& d) { return reference(a, b, d, allowed); }), what);
          expect_close(run(q, k, v, dy, [&](auto& a, auto& b, auto& d) { return dense_masked_attention(a, b, d, layout, block, o); }),
                       run(q, k, v, dy, [&](auto& a, auto& b, auto& d) { return reference(a, b, d, allowed); }), what + " (dense path)");
        }
}

TEST(BlockSparseAttention, KeyPaddingAnAdditiveMaskAndQueriesWithNoKeyLeft) {
  torch::manual_seed(5);
  const int64_t B = 2, H = 2, T = 64, D = 8, block = 16;
  SparseAttentionConfig c = mode(SparseMode::kBSLongformer, SparseDirection::kBidirectional);
  c.block = block;
  const at::Tensor layout = make_layout(c, H, T);
  const at::Tensor q = at::randn({B, H, T, D}), k = at::randn({B, H, T, D}), v = at::randn({B, H, T, D}),
                   dy = at::randn({B, H, T, D});
  AttentionOptions o;
  o.causal = true;
  o.key_padding_mask = at::zeros({B, T}, at::kBool);
  o.key_padding_mask[0].fill_(true);             // sequence 0: every key is padding
  o.key_padding_mask[1].slice(0, 40).fill_(true);  // sequence 1: keys from 40 on
  o.attn_mask = at::randn({T, T});
  at::Tensor allowed = token_mask(layout, block).unsqueeze(0) & at::ones({T, T}, at::kBool).tril() &
                       o.key_padding_mask.logical_not().view({B, 1, 1, T});
  const Grads sparse = run(q, k, v, dy, [&](auto& a, auto& b, auto& d) { return block_sparse_attention(a, b, d, layout, block, o); });
  expect_close(sparse, run(q, k, v, dy, [&](auto& a, auto& b, auto& d) { return reference(a, b, d, allowed, o.attn_mask); }),
               "padding + additive mask");
  EXPECT_EQ(sparse.out[0].abs().max().item<double>(), 0.0);  // no key at all: zeros
  EXPECT_EQ(sparse.dq[0].abs().max().item<double>(), 0.0);
  EXPECT_FALSE(sparse.out.isnan().any().item<bool>());
}

// Central differences in double precision against the analytic gradient, at random elements.
TEST(BlockSparseAttention, GradientsMatchFiniteDifferencesInDouble) {
  torch::manual_seed(9);
  const int64_t T = 32, block = 8;
  SparseAttentionConfig c = mode(SparseMode::kBigBird, SparseDirection::kUnidirectional);
  c.block = block;
  const at::Tensor layout = make_layout(c, 2, T, 4);
  AttentionOptions o;
  o.causal = true;
  const auto opts = at::TensorOptions().dtype(at::kDouble);
  at::Tensor x[3] = {at::randn({1, 2, T, 4}, opts), at::randn({1, 2, T, 4}, opts), at::randn({1, 2, T, 4}, opts)};
  const at::Tensor w = at::randn({1, 2, T, 4}, opts);
  auto loss = [&](const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
    return (block_sparse_attention(q, k, v, layout, block, o) * w).sum();
  };
  const Grads g = run(x[0], x[1], x[2], w, [&](auto& a, auto& b, auto& d) { return block_sparse_attention(a, b, d, layout, block, o); });
  const at::Tensor* grads[3] = {&g.dq, &g.dk, &g.dv};
  const double eps = 1e-6;
  for (int which = 0; which < 3; ++which)
    for (int trial = 0; trial < 8; ++trial) {
      const int64_t i = at::randint(x[which].numel(), {1}).item<int64_t>();
      at::Tensor plus[3] = {x[0].clone(), x[1].clone(), x[2].clone()}, minus[3] = {x[0].clone(), x[1].clone(), x[2].clone()};
      plus[which].view({-1})[i] += eps;
      minus[which].view({-1})[i] -= eps;
      const double numeric =
          (loss(plus[0], plus[1], plus[2]).item<double>() - loss(minus[0], minus[1], minus[2]).item<double>()) / (2 * eps);
      EXPECT_NEAR(grads[which]->view({-1})[i].item<double>(), numeric, 1e-6) << "tensor " << which << " element " << i;
    }
}

// Exact attention through the block kernels (full_layout): causal and not, a sequence that is
// not a multiple of the block (the last block partial), against plain attention.
TEST(BlockSparseAttention, FullLayoutIsExactAttentionAlsoWithAPartialLastBlock) {
  torch::manual_seed(17);
  for (const bool causal : {false, true})
    for (const int64_t T : {100, 128, 37}) {
      const int64_t block = 32, H = 3;
      const at::Tensor layout = full_layout(H, T, block, causal);
      ASSERT_EQ(layout.size(1), (T + block - 1) / block);
      const at::Tensor q = at::randn({2, H, T, 24}), k = at::randn({2, H, T, 24}), v = at::randn({2, H, T, 24}),
                       dy = at::randn({2, H, T, 24});
      AttentionOptions o;
      o.causal = causal;
      const at::Tensor allowed = causal ? at::ones({T, T}, at::kBool).tril() : at::ones({T, T}, at::kBool);
      expect_close(run(q, k, v, dy, [&](auto& a, auto& b, auto& d) { return block_sparse_attention(a, b, d, layout, block, o); }),
                   run(q, k, v, dy, [&](auto& a, auto& b, auto& d) { return reference(a, b, d, allowed); }),
                   ds::str(causal ? "causal" : "bidirectional", " T ", T));
    }
}

// One sequence and one head on several threads: the backward splits the query rows into
// ranges (the later ones with key/value gradients of their own, summed at the end). The same
// gradients as plain attention at every thread count, and as one thread within rounding.
TEST(BlockSparseAttention, OneSequenceOfOneHeadSplitsItsBackwardOverThreads) {
  torch::manual_seed(37);
  const int64_t T = 640, block = 32;
  SparseAttentionConfig c = mode(SparseMode::kBSLongformer, SparseDirection::kUnidirectional);
  c.block = block;
  const at::Tensor layout = make_layout(c, 1, T);
  const at::Tensor q = at::randn({1, 1, T, 32}), k = at::randn({1, 1, T, 32}), v = at::randn({1, 1, T, 32}),
                   dy = at::randn({1, 1, T, 32});
  AttentionOptions o;
  o.causal = true;
  const at::Tensor allowed = token_mask(layout, block).unsqueeze(0) & at::ones({T, T}, at::kBool).tril();
  const Grads want = run(q, k, v, dy, [&](auto& a, auto& b, auto& d) { return reference(a, b, d, allowed); });
  const int before = at::get_num_threads();
  Grads one;
  for (const int threads : {1, 3, 7}) {  // 1, 3 and 7 ranges of rows
    at::set_num_threads(threads);
    const Grads got = run(q, k, v, dy, [&](auto& a, auto& b, auto& d) { return block_sparse_attention(a, b, d, layout, block, o); });
    expect_close(got, want, ds::str(threads, " threads"));
    if (threads == 1) {
      one = got;
    } else {
      expect_close(got, one, ds::str(threads, " threads against 1"), 1e-6);
    }
  }
  at::set_num_threads(before);
}

// Several (batch, head) pairs, fewer than the threads: 2 x 3 pairs on 13 threads split each
// pair's rows in 3, the later ranges' dK/dV in buffers per range and pair; per-head layouts.
TEST(BlockSparseAttention, FewerPairsThanThreadsSplitEachPairsBackward) {
  torch::manual_seed(41);
  const int64_t B = 2, H = 3, T = 320, block = 32;
  SparseAttentionConfig c = mode(SparseMode::kBigBird, SparseDirection::kUnidirectional);
  c.block = block;
  const at::Tensor layout = make_layout(c, H, T, 5);
  ASSERT_FALSE(layout[0].equal(layout[1]));  // the heads differ
  const at::Tensor q = at::randn({B, H, T, 16}), k = at::randn({B, H, T, 16}), v = at::randn({B, H, T, 16}),
                   dy = at::randn({B, H, T, 16});
  AttentionOptions o;
  o.causal = true;
  const at::Tensor allowed = token_mask(layout, block).unsqueeze(0) & at::ones({T, T}, at::kBool).tril();
  const int before = at::get_num_threads();
  at::set_num_threads(13);
  const Grads got = run(q, k, v, dy, [&](auto& a, auto& b, auto& d) { return block_sparse_attention(a, b, d, layout, block, o); });
  at::set_num_threads(before);
  expect_close(got, run(q, k, v, dy, [&](auto& a, auto& b, auto& d) { return reference(a, b, d, allowed); }), "13 threads");
}

// Masks on a partial last block (T = 57 in blocks of 16): key padding and an additive mask.
TEST(BlockSparseAttention, MasksOnAPartialLastBlock) {
  torch::manual_seed(43);
  const int64_t B = 2, H = 2, T = 57, block = 16;
  const at::Tensor layout = full_layout(H, T, block, true);
  const at::Tensor q = at::randn({B, H, T, 8}), k = at::randn({B, H, T, 8}), v = at::randn({B, H, T, 8}),
                   dy = at::randn({B, H, T, 8});
  AttentionOptions o;
  o.causal = true;
  o.key_padding_mask = at::zeros({B, T}, at::kBool);
  o.key_padding_mask[1].slice(0, 50).fill_(true);  // keys inside the last, partial block
  o.attn_mask = at::randn({T, T});
  const at::Tensor allowed = at::ones({T, T}, at::kBool).tril() & o.key_padding_mask.logical_not().view({B, 1, 1, T});
  expect_close(run(q, k, v, dy, [&](auto& a, auto& b, auto& d) { return block_sparse_attention(a, b, d, layout, block, o); }),
               run(q, k, v, dy, [&](auto& a, auto& b, auto& d) { return reference(a, b, d, allowed, o.attn_mask); }),
               "partial block, padding + additive mask");
}

// bf16 inputs compute in fp32 and come back in bf16, gradients too: within bf16 rounding of
// the fp32 result on the same (bf16-representable) inputs.
TEST(BlockSparseAttention, Bf16InputsComputeInFp32) {
  torch::manual_seed(19);
  const int64_t T = 128, block = 32;
  const at::Tensor layout = full_layout(2, T, block, true);
  const at::Tensor q = at::randn({1, 2, T, 32}).to(at::kBFloat16), k = at::randn({1, 2, T, 32}).to(at::kBFloat16),
                   v = at::randn({1, 2, T, 32}).to(at::kBFloat16), dy = at::randn({1, 2, T, 32}).to(at::kBFloat16);
  AttentionOptions o;
  o.causal = true;
  const auto f = [&](auto& a, auto& b, auto& d) { return block_sparse_attention(a, b, d, layout, block, o); };
  const Grads half = run(q, k, v, dy, f);
  EXPECT_EQ(half.out.scalar_type(), at::kBFloat16);
  EXPECT_EQ(half.dq.scalar_type(), at::kBFloat16);
  const Grads full = run(q.to(at::kFloat), k.to(at::kFloat), v.to(at::kFloat), dy.to(at::kFloat), f);
  const auto rel = [](const at::Tensor& a, const at::Tensor& b) {
    return ((a.to(at::kFloat) - b).abs().max() / b.abs().max()).item<double>();
  };
  EXPECT_LT(rel(half.out, full.out), 1e-2);
  EXPECT_LT(rel(half.dq, full.dq), 1e-2);
  EXPECT_LT(rel(half.dk, full.dk), 1e-2);
  EXPECT_LT(rel(half.dv, full.dv), 1e-2);
}

TEST(BlockSparseAttention, ShapesThatDoNotFitAreNamed) {
  const at::Tensor q = at::randn({1, 2, 48, 8});
  const at::Tensor layout = at::ones({2, 3, 3}, at::kBool);
  EXPECT_ERROR_HAS(block_sparse_attention(q, q, q, layout, 32),
                   "the layout is [2, 3, 3] but 2 heads of 48 tokens in blocks of 32 need [2, 2, 2]");
  EXPECT_ERROR_HAS(block_sparse_attention(q, q, q, at::ones({1, 3, 3}, at::kBool), 16),
                   "the layout is [1, 3, 3] but 2 heads of 48 tokens in blocks of 16 need [2, 3, 3]");
  EXPECT_ERROR_HAS(block_sparse_attention(q, q.slice(2, 0, 32), q, layout, 16), "must have q's shape");
  AttentionOptions o;
  o.attn_mask = at::ones({48, 48}, at::kBool);
  EXPECT_ERROR_HAS(block_sparse_attention(q, q, q, layout, 16, o), "give a float mask (0 to keep, -inf to mask)");
  o.attn_mask = at::zeros({48, 48}).requires_grad_();
  EXPECT_ERROR_HAS(block_sparse_attention(q, q, q, layout, 16, o), "attn_mask requires grad");
  AttentionOptions negative;
  negative.scale = -1;
  EXPECT_ERROR_HAS(block_sparse_attention(q, q, q, layout, 16, negative), "scale must be positive");
  // No double backward; an empty batch is no error.
  at::Tensor x = q.clone().requires_grad_();
  at::Tensor y = block_sparse_attention(x, x, x, layout, 16).sum();
  EXPECT_ERROR_HAS(torch::autograd::grad({y}, {x}, {}, /*retain_graph=*/true, /*create_graph=*/true),
                   "no double backward");
  at::Tensor none = at::randn({0, 2, 48, 8}).requires_grad_();
  block_sparse_attention(none, none, none, layout, 16).sum().backward();
  EXPECT_EQ(none.grad().numel(), 0);
}

}  // namespace
}  // namespace ds::sparse
