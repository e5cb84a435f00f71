// Private to src/sparse: the fused block-sparse attention kernels behind
// ds::sparse::block_sparse_attention. Tile by tile over the layout's kept blocks, with an
// online softmax (FlashAttention's recurrence): the forward keeps only the output and each
// query's log-sum-exp; the backward recomputes a tile's probabilities from them. Nothing of
// size T x T (or kept blocks x block²) is ever stored; scratch is a few block x block tiles
// per thread.
#pragma once

#include <ATen/core/Tensor.h>

#include <tuple>

namespace ds::sparse::detail {

struct FusedArgs {
  at::Tensor row_ptr, cols;  // the plan's CSR layout (int64): kept key blocks of block row h * nb + r
  int64_t block = 0;
  bool causal = false;
  double scale = 1.0;
  at::Tensor key_padding;    // [B, T] bool, or undefined
  at::Tensor attn_mask;      // [T, T] in q's dtype, or undefined
};

// q, k, v: contiguous [B, H, T, D], float or double. Returns (out [B, H, T, D], lse [B, H, T]),
// lse = -inf for a query whose every key is masked (its output row is zeros).
std::tuple<at::Tensor, at::Tensor> fused_forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                 const FusedArgs& a);

// Gradients of q, k, v from the output's gradient and what the forward returned.
std::tuple<at::Tensor, at::Tensor, at::Tensor> fused_backward(const at::Tensor& dout, const at::Tensor& q,
                                                              const at::Tensor& k, const at::Tensor& v,
                                                              const at::Tensor& out, const at::Tensor& lse,
                                                              const FusedArgs& a);

}  // namespace ds::sparse::detail
