// DeepSpeed's SparseSelfAttention for any LibTorch model: attention over a layout's kept
// blocks through the fused block kernels (ds/sparse/attention.h), the layout made from the
// config's sparse_attention section once per sequence length and cached (a bounded cache).
//
//   ds::sparse::SparseSelfAttention attn(config.sparse_attention, /*heads=*/8, /*seed=*/run_seed);
//   at::Tensor y = attn(q, k, v);                                  // q, k, v, y: [B, H, T, D]
//   y = attn(q, k, v, key_padding_mask /*[B, T] bool, true = pad*/, attn_mask /*[T, T], added*/);
//
// Causal (keys after the query masked, inside diagonal blocks too) when the section's
// `attention` is "unidirectional", unless told otherwise. SparseSelfAttention::exact(heads)
// is exact attention through the same kernels (every block, or every block at or below the
// diagonal): memory grows with T x head width, not T², and any T works (a partial last block).
// With tensor parallelism, keep_heads(first, count) makes this rank compute its heads of the
// layout. No parameters: a model may hold it without registering it.
//
// A model that uses it from the config's section says so to the engine by deriving
// ds::nn::SparseAttentionUser (ds/nn/sparse_attention_user.h).
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <utility>

#include "ds/config/sections.h"
#include "ds/sparse/attention.h"

namespace ds::sparse {

class SparseSelfAttentionImpl : public torch::nn::Module {
 public:
  // Throws ds::ConfigError when the section is not enabled.
  SparseSelfAttentionImpl(const SparseAttentionConfig& config, int64_t heads, uint64_t seed = 0,
                          std::optional<bool> causal = std::nullopt);
  static std::shared_ptr<SparseSelfAttentionImpl> exact(int64_t heads, bool causal = true, int64_t block = 64);

  // q, k, v: [B, heads this rank computes, T, D]. Throws ds::ConfigError when the layout
  // cannot hold T (not a multiple of the block, ...), ds::Error for shapes that do not fit.
  at::Tensor forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                     const at::Tensor& key_padding_mask = {}, const at::Tensor& attn_mask = {});

  // Tensor parallelism: compute heads [first, first + count) of the layout's heads.
  void keep_heads(int64_t first, int64_t count);
  // The plan for T tokens (this rank's heads), made once and cached — per block count for
  // exact attention, per length for a sparse layout; the kMaxPlans most recently used are
  // kept, so varying lengths do not grow memory.
  SparsePlan plan(int64_t seq_len);
  static constexpr size_t kMaxPlans = 16;
  size_t cached_plans() const { return plans_.size(); }
  bool causal() const { return causal_; }
  // "fixed block-sparse attention in blocks of 16" / "exact causal attention in blocks of 64".
  std::string describe(int64_t seq_len) const;

 private:
  struct Exact {};
  SparseSelfAttentionImpl(Exact, int64_t heads, bool causal, int64_t block);

  SparseAttentionConfig config_;  // enabled == false: exact attention
  int64_t heads_, first_ = 0, count_;
  uint64_t seed_ = 0;
  bool causal_;
  int64_t exact_block_ = 64;
  struct Cached {
    SparsePlan plan;
    uint64_t last_use = 0;
  };
  std::map<std::pair<int64_t, int64_t>, Cached> plans_;  // by (block, blocks)
  uint64_t uses_ = 0;
};
TORCH_MODULE(SparseSelfAttention);

}  // namespace ds::sparse
