// Block-sparse attention against plain LibTorch attention with the equivalent dense mask:
// outputs and the gradients of q, k and v within 1e-5 (fp32) for every mode, uni- and
// bidirectional, blocks 16 and 32, 1-4 heads and a sequence length that is not a power of
// two; key padding and an additive mask; queries with no key left give zeros, not NaN; and
// finite differences in double precision.
#include "ds/sparse/attention.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <limits>

#include "ds/sparse/layout.h"
#include "support/errors.h"

namespace ds::sparse {
namespace {

// Plain attention over a [B or 1, H, T, T] "may attend" mask, written out here (not the
// library's dense path).
at::Tensor reference(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& allowed,
                     const at::Tensor& additive = {}) {
  at::Tensor s = at::matmul(q, k.transpose(-1, -2)) / std::sqrt(double(q.size(-1)));
  if (additive.defined()) s = s + additive;
  s = s.masked_fill(allowed.logical_not(), -std::numeric_limits<double>::infinity());
  at::Tensor p = at::softmax(s, -1);
  p = at::where(allowed.any(-1, true).expand_as(p), p, at::zeros_like(p));  // no key: zeros
  return at::matmul(p, v);
}

struct Grads {
  at::Tensor out, dq, dk, dv;
};

template <typename F>
Grads run(const at::Tensor& q0, const at::Tensor& k0, const at::Tensor& v0, const at::Tensor& dy, F f) {
  at::Tensor q = q0.clone().requires_grad_(), k = k0.clone().requires_grad_(), v = v0.clone().requires_grad_();
  at::Tensor out = f(q, k, v);
  out.backward(dy);
  return {out.detach(), q.grad(), k.grad(), v.grad()};
}

void expect_close(const Grads& a, const Grads& b, const std::string& what, double tol = 1e-5) {
  EXPECT_LT((a.out - b.out).abs().max().item<double>(), tol) << what << " output";
  EXPECT_LT((a.dq - b.dq).abs().max().item<double>(), tol) << what << " dq";
  EXPECT_LT((a.dk - b.dk).abs().max().item<double>(), tol) << what << " dk";
  EXPECT_LT((a.dv - b.dv).abs().max().item<double>(), tol) << what << " dv";
  EXPECT_FALSE(a.dq.isnan().any().item<bool>()) << what;
}

SparseAttentionConfig mode(SparseMode m, SparseDirection dir) {
  SparseAttentionConfig c;
  c.enabled = true, c.mode = m, c.attention = dir;
  c.num_local_blocks = 2, c.num_global_blocks = 1, c.num_random_blocks = 1, c.num_sliding_window_blocks = 3;
  c.local_window_blocks = {1, 2};
  c.different_layout_per_head = true;
  return c;
}

TEST(BlockSparseAttention, MatchesDenseAttentionWithTheSameMaskInEveryMode) {
  torch::manual_seed(3);
  const int64_t T = 96;  // 6 blocks of 16, 3 of 32
  for (int64_t block : {16, 32})
    for (int64_t heads : {1, 3})
      for (SparseMode m : {SparseMode::kDense, SparseMode::kFixed, SparseMode::kVariable, SparseMode::kBigBird,
                           SparseMode::kBSLongformer})
        for (SparseDirection dir : {SparseDirection::kBidirectional, SparseDirection::kUnidirectional}) {
          SparseAttentionConfig c = mode(m, dir);
          c.block = block;
          const at::Tensor layout = make_layout(c, heads, T, 11);
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

TEST(BlockSparseAttention, ShapesThatDoNotFitAreNamed) {
  const at::Tensor q = at::randn({1, 2, 48, 8});
  const at::Tensor layout = at::ones({2, 3, 3}, at::kBool);
  EXPECT_ERROR_HAS(block_sparse_attention(q, q, q, layout, 32), "the sequence length 48 is not a multiple of block 32");
  EXPECT_ERROR_HAS(block_sparse_attention(q, q, q, at::ones({1, 3, 3}, at::kBool), 16),
                   "the layout is [1, 3, 3] but 2 heads of 48 tokens in blocks of 16 need [2, 3, 3]");
  EXPECT_ERROR_HAS(block_sparse_attention(q, q.slice(2, 0, 32), q, layout, 16), "must have q's shape");
}

}  // namespace
}  // namespace ds::sparse
