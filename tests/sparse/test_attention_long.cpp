// Block-sparse attention at long sequences (up to 4096 tokens, blocks 16-64, 1-4 heads)
// against plain attention with the equivalent mask (in double): outputs and q/k/v gradients
// within 1e-5.
// Its own binary, labelled slow: the dense reference needs T x T scores.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "ds/common/error.h"
#include "ds/sparse/attention.h"
#include "ds/sparse/layout.h"
#include "sparse/reference.h"

namespace ds::sparse {
namespace {

using test::expect_close;
using test::mode;
using test::reference;
using test::run;

TEST(BlockSparseAttentionLong, SequencesUpTo4096MatchDenseAttention) {
  torch::manual_seed(13);
  struct Case {
    SparseMode mode;
    int64_t T, block, heads;
  };
  for (const Case& cs : {Case{SparseMode::kBSLongformer, 4096, 64, 2}, Case{SparseMode::kFixed, 4032, 64, 1},
                         Case{SparseMode::kBigBird, 2048, 32, 4}, Case{SparseMode::kDense, 1024, 16, 1}}) {
    SparseAttentionConfig c = mode(cs.mode, SparseDirection::kUnidirectional);
    c.block = cs.block, c.num_local_blocks = 4, c.num_sliding_window_blocks = 5;
    const at::Tensor layout = make_layout(c, cs.heads, cs.T, 2);
    const at::Tensor q = at::randn({1, cs.heads, cs.T, 64}), k = at::randn({1, cs.heads, cs.T, 64}),
                     v = at::randn({1, cs.heads, cs.T, 64}), dy = at::randn({1, cs.heads, cs.T, 64});
    AttentionOptions o;
    o.causal = true;
    const at::Tensor allowed = token_mask(layout, cs.block).unsqueeze(0) & at::ones({cs.T, cs.T}, at::kBool).tril();
    expect_close(run(q, k, v, dy, [&](auto& a, auto& b, auto& d) { return block_sparse_attention(a, b, d, layout, cs.block, o); }),
                 run(q.to(at::kDouble), k.to(at::kDouble), v.to(at::kDouble), dy.to(at::kDouble),
                     [&](auto& a, auto& b, auto& d) { return reference(a, b, d, allowed); }),
                 ds::str(sparse_mode_name(cs.mode), " T ", cs.T, " block ", cs.block, " heads ", cs.heads));
  }
}

}  // namespace
}  // namespace ds::sparse
