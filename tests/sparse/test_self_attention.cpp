// ds::sparse::SparseSelfAttention, the module a LibTorch model holds: the config's layout
// (causal from its direction, or as told), masks passed through, a rank's slice of the heads
// under tensor parallelism, exact attention in blocks for any length, and bad settings as
// one-line errors.
#include "ds/sparse/self_attention.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "ds/sparse/layout.h"
#include "sparse/reference.h"
#include "support/errors.h"

namespace ds::sparse {
namespace {

using test::mode;
using test::reference;

double max_diff(const at::Tensor& a, const at::Tensor& b) { return (a - b).abs().max().item<double>(); }

TEST(SparseSelfAttention, ComputesTheConfigsLayoutWithItsDirectionAndTheMasks) {
  torch::manual_seed(23);
  const int64_t B = 2, H = 4, T = 128, D = 16;
  SparseAttentionConfig c = mode(SparseMode::kBigBird, SparseDirection::kUnidirectional);
  c.block = 16;
  SparseSelfAttention attn(c, H, /*seed=*/7);
  EXPECT_TRUE(attn->causal());
  EXPECT_TRUE(attn->parameters().empty());
  const at::Tensor q = at::randn({B, H, T, D}), k = at::randn({B, H, T, D}), v = at::randn({B, H, T, D});
  at::Tensor padding = at::zeros({B, T}, at::kBool);
  padding[1].slice(0, 100).fill_(true);
  const at::Tensor additive = at::randn({T, T});
  const at::Tensor layout = make_layout(c, H, T, 7);
  const at::Tensor allowed = token_mask(layout, c.block).unsqueeze(0) & at::ones({T, T}, at::kBool).tril() &
                             padding.logical_not().view({B, 1, 1, T});
  EXPECT_LT(max_diff(attn(q, k, v, padding, additive), reference(q, k, v, allowed, additive)), 1e-5);
  const void* first = attn->plan(T).row_ptr.data_ptr();
  EXPECT_EQ(attn->plan(T).row_ptr.data_ptr(), first);  // cached per length, not made again

  SparseSelfAttention both(c, H, 7, /*causal=*/false);  // the layout's blocks, no mask inside them
  EXPECT_LT(max_diff(both(q, k, v), reference(q, k, v, token_mask(layout, c.block).unsqueeze(0))), 1e-5);
}

TEST(SparseSelfAttention, ARankKeepsItsHeadsOfTheLayout) {
  torch::manual_seed(29);
  const int64_t H = 4, T = 96, D = 8;
  SparseAttentionConfig c = mode(SparseMode::kVariable, SparseDirection::kBidirectional);
  c.block = 16, c.different_layout_per_head = true;
  const at::Tensor q = at::randn({1, H, T, D}), k = at::randn({1, H, T, D}), v = at::randn({1, H, T, D});
  const at::Tensor whole = SparseSelfAttention(c, H, 3)(q, k, v);
  SparseSelfAttention part(c, H, 3);
  part->keep_heads(1, 2);
  const at::Tensor mine = part(q.narrow(1, 1, 2), k.narrow(1, 1, 2), v.narrow(1, 1, 2));
  EXPECT_LT(max_diff(mine, whole.narrow(1, 1, 2)), 1e-6);
  EXPECT_ERROR_HAS(part(q, k, v), "SparseSelfAttention: q is [1, 4, 96, 8], expected [batch, 2 heads, seq, width]");
  EXPECT_ERROR_HAS(part->keep_heads(3, 2), "heads [3, 5) are not within the layout's 4 heads");
}

TEST(SparseSelfAttention, ExactAttentionInBlocksForAnyLength) {
  torch::manual_seed(31);
  for (const int64_t T : {7, 64, 150}) {
    const at::Tensor q = at::randn({2, 3, T, 8}), k = at::randn({2, 3, T, 8}), v = at::randn({2, 3, T, 8});
    auto exact = SparseSelfAttention(SparseSelfAttentionImpl::exact(3, /*causal=*/true, /*block=*/32));
    EXPECT_LT(max_diff(exact(q, k, v), reference(q, k, v, at::ones({T, T}, at::kBool).tril())), 1e-5) << T;
    auto full = SparseSelfAttention(SparseSelfAttentionImpl::exact(3, /*causal=*/false, /*block=*/32));
    EXPECT_LT(max_diff(full(q, k, v), reference(q, k, v, at::ones({T, T}, at::kBool))), 1e-5) << T;
    EXPECT_NE(exact->describe(T).find("exact causal attention in blocks of"), std::string::npos);
  }
}

TEST(SparseSelfAttention, LengthsOfOneBlockCountShareAPlanAndTheCacheIsBounded) {
  torch::manual_seed(37);
  auto exact = SparseSelfAttention(SparseSelfAttentionImpl::exact(2, /*causal=*/true, /*block=*/8));
  const void* two_blocks = exact->plan(9).row_ptr.data_ptr();
  EXPECT_EQ(exact->plan(16).row_ptr.data_ptr(), two_blocks);  // 9 to 16 tokens: 2 blocks of 8
  EXPECT_NE(exact->plan(17).row_ptr.data_ptr(), two_blocks);
  for (const int64_t T : {9, 12, 16}) {  // one shared plan, each length right
    const at::Tensor q = at::randn({1, 2, T, 4}), k = at::randn({1, 2, T, 4}), v = at::randn({1, 2, T, 4});
    EXPECT_LT(max_diff(exact(q, k, v), reference(q, k, v, at::ones({T, T}, at::kBool).tril())), 1e-5) << T;
  }
  // Varying lengths (as with dynamic padding) keep at most kMaxPlans plans, and a length whose
  // plan was dropped is planned again and still right.
  const size_t lengths = SparseSelfAttentionImpl::kMaxPlans + 6;
  for (size_t round = 0; round < 2; ++round)
    for (size_t i = 0; i < lengths; ++i) {
      const int64_t T = 8 * int64_t(i) + 3;
      const at::Tensor q = at::randn({1, 2, T, 4}), k = at::randn({1, 2, T, 4}), v = at::randn({1, 2, T, 4});
      EXPECT_LT(max_diff(exact(q, k, v), reference(q, k, v, at::ones({T, T}, at::kBool).tril())), 1e-5) << T;
      EXPECT_LE(exact->cached_plans(), SparseSelfAttentionImpl::kMaxPlans);
    }
  EXPECT_EQ(exact->cached_plans(), SparseSelfAttentionImpl::kMaxPlans);

  // A sparse layout is kept per length: a cached neighbour does not let a length it cannot hold through.
  SparseAttentionConfig c = mode(SparseMode::kFixed, SparseDirection::kUnidirectional);
  c.block = 16;
  SparseSelfAttention sparse(c, 2);
  EXPECT_NO_THROW(sparse->plan(112));
  EXPECT_ERROR_HAS(sparse->plan(100), "not a multiple of");
}

TEST(SparseSelfAttention, SettingsItCannotUseAreOneLineErrors) {
  SparseAttentionConfig off;
  EXPECT_ERROR_HAS(SparseSelfAttention(off, 2), "the sparse_attention section is not enabled");
  SparseAttentionConfig c = mode(SparseMode::kFixed, SparseDirection::kUnidirectional);
  c.block = 16;
  EXPECT_ERROR_HAS(SparseSelfAttention(c, 0), "heads must be at least 1, got 0");
  SparseSelfAttention attn(c, 2);
  const at::Tensor q = at::randn({1, 2, 40, 8});
  EXPECT_ERROR_HAS(attn(q, q, q), "not a multiple of");
}

}  // namespace
}  // namespace ds::sparse
