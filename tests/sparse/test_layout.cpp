// Block-sparse layouts against DeepSpeed's patterns worked out by hand for small sequences,
// the properties every layout must have, and the one-line errors for parameters a sequence
// cannot hold.
#include "ds/sparse/layout.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "support/errors.h"

namespace ds::sparse {
namespace {

SparseAttentionConfig config(SparseMode mode) {
  SparseAttentionConfig c;
  c.enabled = true;
  c.mode = mode;
  c.block = 16;
  return c;
}

// Rows as strings of 0/1 for readable expectations.
std::vector<std::string> rows(const at::Tensor& layout, int64_t head = 0) {
  std::vector<std::string> out;
  const at::Tensor l = layout[head];
  for (int64_t r = 0; r < l.size(0); ++r) {
    std::string s;
    for (int64_t c = 0; c < l.size(1); ++c) s += l[r][c].item<bool>() ? '1' : '0';
    out.push_back(s);
  }
  return out;
}

using Rows = std::vector<std::string>;

TEST(SparseLayout, FixedHasLocalWindowsAndTheLastBlockOfEachAsGlobal) {
  SparseAttentionConfig c = config(SparseMode::kFixed);  // 4 local blocks, 1 global
  EXPECT_EQ(rows(make_layout(c, 2, 8 * 16)), (Rows{"11110001", "11110001", "11110001", "11110001", "00011111",
                                                   "00011111", "00011111", "00011111"}));
  c.attention = SparseDirection::kUnidirectional;
  EXPECT_EQ(rows(make_layout(c, 1, 8 * 16)), (Rows{"10000000", "11000000", "11100000", "11110000", "00011000",
                                                   "00011100", "00011110", "00011111"}));
  // A short last window (10 blocks: windows of 4, 4, 2) still has a global block: its last.
  c.attention = SparseDirection::kBidirectional;
  EXPECT_EQ(rows(make_layout(c, 1, 10 * 16))[0], "1111000101");
  // Horizontal: the global blocks' rows attend everywhere too.
  c.horizontal_global_attention = true;
  EXPECT_EQ(rows(make_layout(c, 1, 8 * 16))[3], "11111111");
  // Per-head patterns: head 1 takes the window's third block as global.
  c = config(SparseMode::kFixed);
  c.different_layout_per_head = true, c.num_different_global_patterns = 2;
  const at::Tensor two = make_layout(c, 2, 8 * 16);
  EXPECT_EQ(rows(two, 0)[0], "11110001");
  EXPECT_EQ(rows(two, 1)[0], "11110010");
}

TEST(SparseLayout, BsLongformerBigBirdAndVariable) {
  SparseAttentionConfig c = config(SparseMode::kBSLongformer);  // sliding 3, global block 0
  EXPECT_EQ(rows(make_layout(c, 1, 6 * 16)), (Rows{"111111", "111000", "111100", "101110", "100111", "100011"}));
  c.global_block_indices = {1}, c.global_block_end_indices = std::vector<int64_t>{3};  // blocks 1 and 2
  EXPECT_EQ(rows(make_layout(c, 1, 6 * 16))[5], "011011");
  c = config(SparseMode::kBigBird);  // sliding 3, 1 global, no random blocks
  EXPECT_EQ(rows(make_layout(c, 1, 5 * 16)), (Rows{"11111", "11100", "11110", "10111", "10011"}));
  c = config(SparseMode::kVariable);  // windows of 2 then 3, repeated 3; global block 0
  c.local_window_blocks = {2, 3};
  EXPECT_EQ(rows(make_layout(c, 1, 8 * 16)), (Rows{"11000000", "11000000", "10111000", "10111000", "10111000",
                                                   "10000111", "10000111", "10000111"}));
  EXPECT_DOUBLE_EQ(density(make_layout(config(SparseMode::kDense), 3, 4 * 16)), 1.0);
}

TEST(SparseLayout, RandomBlocksComeFromTheSeedAndUnidirectionalStaysCausal) {
  SparseAttentionConfig c = config(SparseMode::kBigBird);
  c.num_random_blocks = 2, c.num_sliding_window_blocks = 1, c.num_global_blocks = 1;
  const at::Tensor a = make_layout(c, 2, 16 * 16, 7), b = make_layout(c, 2, 16 * 16, 7), d = make_layout(c, 2, 16 * 16, 8);
  EXPECT_TRUE(at::equal(a, b));
  EXPECT_FALSE(at::equal(a, d));
  EXPECT_TRUE(at::equal(a[0], a[1]));  // one layout for all heads unless asked
  // Every row: its diagonal, column 0, and 2 random columns (some may coincide with those).
  const at::Tensor per_row = a[0].sum(-1);
  EXPECT_GE(per_row.min().item<int64_t>(), 2);
  EXPECT_LE(per_row.slice(0, 1).max().item<int64_t>(), 4);
  c.different_layout_per_head = true;
  const at::Tensor per_head = make_layout(c, 2, 16 * 16, 7);
  EXPECT_FALSE(at::equal(per_head[0], per_head[1]));
  for (SparseMode m : {SparseMode::kFixed, SparseMode::kVariable, SparseMode::kBigBird, SparseMode::kBSLongformer}) {
    SparseAttentionConfig u = config(m);
    u.attention = SparseDirection::kUnidirectional;
    u.num_random_blocks = 2;
    const at::Tensor l = make_layout(u, 2, 12 * 16, 3);
    EXPECT_EQ(l.triu(1).sum().item<int64_t>(), 0) << sparse_mode_name(m);
    EXPECT_TRUE(l.diagonal(0, 1, 2).all().item<bool>()) << sparse_mode_name(m);  // every query sees itself
  }
}

TEST(SparseLayout, ParametersTheSequenceCannotHoldAreOneLine) {
  SparseAttentionConfig c = config(SparseMode::kBSLongformer);
  EXPECT_ERROR_HAS(make_layout(c, 1, 100), "the sequence length 100 is not a multiple of block 16; pad the sequence to 112");
  c.global_block_indices = {0, 9};
  EXPECT_ERROR_HAS(make_layout(c, 1, 8 * 16), "global_block_indices[1] is 9 but the sequence has only 8 blocks");
  c = config(SparseMode::kBSLongformer);
  c.num_sliding_window_blocks = 9;
  EXPECT_ERROR_HAS(make_layout(c, 1, 8 * 16), "num_sliding_window_blocks is 9 but the sequence has only 8 blocks");
  c = config(SparseMode::kVariable);
  c.num_random_blocks = 9;
  EXPECT_ERROR_HAS(make_layout(c, 1, 8 * 16), "num_random_blocks is 9 but a row of the sequence has only 8 blocks");
  c = config(SparseMode::kFixed);
  c.num_different_global_patterns = 5;
  EXPECT_ERROR_HAS(make_layout(c, 1, 8 * 16), "num_different_global_patterns is 5 but num_local_blocks / num_global_blocks allows at most 4");
  EXPECT_ERROR_HAS(make_layout(config(SparseMode::kDense), 0, 64), "at least 1 head");
}

}  // namespace
}  // namespace ds::sparse
