// Block-sparse attention on the CPU: softmax(Q Kᵀ · scale + mask) V computed only over the
// blocks a layout keeps (ds/sparse/layout.h), with autograd. Memory and work grow with the kept
// blocks, never with T²: the T x T score matrix is never formed.
//
//   at::Tensor layout = ds::sparse::make_layout(config.sparse_attention, heads, T, seed);
//   ds::sparse::AttentionOptions o;
//   o.causal = true;                                   // a decoder
//   at::Tensor y = ds::sparse::block_sparse_attention(q, k, v, layout, block, o);  // [B, H, T, D]
//
// How: the block rows of all heads are grouped by how many blocks they keep (rounded up to a
// power of two, so a row pads at most 2x); for each group the kept key and value blocks are
// gathered (index_select) and each query block row meets them in one batched GEMM, the
// softmax runs over the row's kept keys, and a second GEMM takes the values. Masks apply
// inside the kept blocks: causal (key after query), key padding, an additive mask. A query
// whose every key is masked gets zeros (not NaN), and no gradient. bf16 inputs compute the
// softmax in fp32.
#pragma once

#include <ATen/core/Tensor.h>

#include <vector>

namespace ds::sparse {

struct AttentionOptions {
  bool causal = false;           // mask keys after the query (a decoder)
  double scale = 0.0;            // 0: 1 / sqrt(head width)
  at::Tensor key_padding_mask;   // optional [B, T] bool, true = a padding key (masked)
  at::Tensor attn_mask;          // optional [T, T] float, added to the scores
};

// What a layout needs at every call, worked out once: the block rows grouped by kept-block
// count, with their gathered key blocks, padding flags and token positions as index tensors.
// A model keeps one per sequence length (the reference GPT does).
struct SparsePlan {
  struct Group {
    at::Tensor rows, cols;     // flat h * nb + r block rows; [rows * width] kept key blocks
    at::Tensor padding;        // [rows, 1, width * block] true for a padding column
    at::Tensor q_pos, k_pos;   // token positions: [rows, block], [rows, width * block]
    int64_t width = 1;
  };
  std::vector<Group> groups;
  at::Tensor order;  // where each block row lands in the groups' concatenation
  int64_t heads = 0, blocks = 0, block = 0;
};
SparsePlan plan_block_sparse(const at::Tensor& layout, int64_t block);

// q, k, v: [B, H, T, D] with T a multiple of `block`; layout: [H, T/block, T/block] bool.
// Throws ds::Error naming the first argument whose shape does not fit.
at::Tensor block_sparse_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                  const at::Tensor& layout, int64_t block, const AttentionOptions& options = {});
// The same with a plan made from the layout beforehand.
at::Tensor block_sparse_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                  const SparsePlan& plan, const AttentionOptions& options = {});

// The same attention through a dense [T, T] mask (the layout's token mask, causal, padding,
// additive mask): the reference the tests compare against, and what dense attention computes.
at::Tensor dense_masked_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                  const at::Tensor& layout, int64_t block, const AttentionOptions& options = {});

}  // namespace ds::sparse
