// Block-sparse attention layouts: DeepSpeed's SparsityConfig patterns (dense, fixed,
// variable, bigbird, bslongformer) as a [heads, blocks, blocks] boolean mask, block (r, c)
// true when the queries of block r attend to the keys of block c.
//
//   ds::SparseAttentionConfig sa = config.sparse_attention;     // the ds_config section
//   at::Tensor layout = ds::sparse::make_layout(sa, /*heads=*/12, /*seq_len=*/4096, /*seed=*/1234);
//   ds::sparse::density(layout);                                 // fraction of blocks kept
//
// The patterns follow DeepSpeed's classes (deepspeed/ops/sparse_attention/sparsity_config.py):
//   fixed        local windows of num_local_blocks (causal inside the window when
//                unidirectional), and num_global_blocks per window as global columns (the last
//                ones of each window; head h with different layouts takes pattern
//                h % num_different_global_patterns), also global rows with
//                horizontal_global_attention
//   variable     num_random_blocks random columns per row, local windows of the given sizes
//                (the last size repeats), global blocks (indices, or [start, end) ranges)
//   bigbird      random columns, a sliding window of num_sliding_window_blocks, the first
//                num_global_blocks blocks as global rows and columns
//   bslongformer a sliding window and global blocks (indices or ranges), rows and columns
//   dense        every block
// Unidirectional layouts keep no block above the diagonal (variable's random blocks are drawn
// at or below it; DeepSpeed draws them anywhere, where causal attention masks them anyway). Random blocks come from `seed`
// (the same on every rank), per head when different_layout_per_head.
//
// Where DeepSpeed would ignore or crash, these are ds::ConfigError naming the key, the value
// and the limit: a seq_len that is not a multiple of `block`, more random, sliding-window or
// global blocks than a row has, a global index beyond the sequence's blocks.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

#include "ds/config/sections.h"

namespace ds::sparse {

at::Tensor make_layout(const SparseAttentionConfig& config, int64_t heads, int64_t seq_len, uint64_t seed = 0);

// Kept blocks over all blocks.
double density(const at::Tensor& layout);

// The token-level mask of a layout ([heads, seq, seq], true = may attend), for references.
at::Tensor token_mask(const at::Tensor& layout, int64_t block);

}  // namespace ds::sparse
