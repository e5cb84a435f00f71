// Block-sparse attention on the CPU: softmax(Q Kᵀ · scale + mask) V computed only over the
// blocks a layout keeps (ds/sparse/layout.h), with autograd. Memory and work grow with the kept
// blocks, never with T²: the T x T score matrix is never formed.
//
//   at::Tensor layout = ds::sparse::make_layout(config.sparse_attention, heads, T, seed);
//   ds::sparse::AttentionOptions o;
//   o.causal = true;                                   // a decoder
//   at::Tensor y = ds::sparse::block_sparse_attention(q, k, v, layout, block, o);  // [B, H, T, D]
//
// How (src/sparse/fused_attention.cpp): one task per query block row; for each kept key
// block a SIMD GEMM makes the block x block score tile in L1, the masks apply inside it, an
// online softmax (FlashAttention's recurrence) folds it into the row's output with a second
// GEMM. The forward keeps only the output and each query's log-sum-exp; the backward
// recomputes each tile's probabilities from them. So memory grows with T x head width, and
// time with the kept blocks. Masks: causal (key after query), key padding, an additive mask.
// A query whose every key is masked gets zeros (not NaN), and no gradient. fp32 and fp64
// compute natively; other dtypes (bf16, fp16) compute in fp32 and return their own dtype.
// The last block may be partial: T need not be a multiple of `block` here (DeepSpeed's
// layouts from make_layout still need one). CPU tensors; the backward is not differentiable
// again (create_graph is refused).
#pragma once

#include <ATen/core/Tensor.h>

namespace ds::sparse {

struct AttentionOptions {
  bool causal = false;           // mask keys after the query (a decoder)
  double scale = 0.0;            // 0: 1 / sqrt(head width)
  at::Tensor key_padding_mask;   // optional [B, T] bool, true = a padding key (masked)
  at::Tensor attn_mask;          // optional [T, T] float, added to the scores (0 keep, -inf mask; not
                                 // learned: a mask that requires grad is refused)
};

// A layout as the kernels walk it, worked out once: block row h * blocks + r keeps the key
// blocks cols[row_ptr[h * blocks + r] .. row_ptr[h * blocks + r + 1]) (ascending). A model
// keeps one per sequence length (the reference GPT does).
struct SparsePlan {
  at::Tensor row_ptr;  // [heads * blocks + 1] int64
  at::Tensor cols;     // [kept blocks] int64
  int64_t heads = 0, blocks = 0, block = 0;
};
SparsePlan plan_block_sparse(const at::Tensor& layout, int64_t block);

// The layout of exact attention through the block kernels: every block ([heads, nb, nb] with
// nb = ceil(T / block)), or every block at or below the diagonal when causal.
at::Tensor full_layout(int64_t heads, int64_t seq_len, int64_t block, bool causal);

// q, k, v: [B, H, T, D]; layout: [H, nb, nb] bool with nb = ceil(T / block).
// Throws ds::Error naming the first argument whose shape does not fit.
at::Tensor block_sparse_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                  const at::Tensor& layout, int64_t block, const AttentionOptions& options = {});
// The same with a plan made from the layout beforehand.
at::Tensor block_sparse_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                  const SparsePlan& plan, const AttentionOptions& options = {});

// The instruction set the kernels were chosen for on this CPU ("AVX2", "AVX3", ...).
const char* kernel_target();

// The same attention through a dense [T, T] mask (the layout's token mask, causal, padding,
// additive mask): the reference the tests compare against, and what dense attention computes.
at::Tensor dense_masked_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                  const at::Tensor& layout, int64_t block, const AttentionOptions& options = {});

}  // namespace ds::sparse
