#include "ds/sparse/self_attention.h"

#include <algorithm>

#include "ds/common/error.h"
#include "ds/sparse/layout.h"

namespace ds::sparse {

SparseSelfAttentionImpl::SparseSelfAttentionImpl(const SparseAttentionConfig& config, int64_t heads, uint64_t seed,
                                                 std::optional<bool> causal)
    : config_(config),
      heads_(heads),
      count_(heads),
      seed_(seed),
      causal_(causal.value_or(config.attention == SparseDirection::kUnidirectional)) {
  if (!config.enabled)
    throw ConfigError("SparseSelfAttention: the sparse_attention section is not enabled (no mode); for exact "
                      "attention through the block kernels use SparseSelfAttention::exact");
  if (heads < 1) throw ConfigError(ds::str("SparseSelfAttention: heads must be at least 1, got ", heads));
}

SparseSelfAttentionImpl::SparseSelfAttentionImpl(Exact, int64_t heads, bool causal, int64_t block)
    : heads_(heads), count_(heads), causal_(causal), exact_block_(block) {
  if (heads < 1) throw ConfigError(ds::str("SparseSelfAttention: heads must be at least 1, got ", heads));
  if (block < 1) throw ConfigError(ds::str("SparseSelfAttention: block must be at least 1, got ", block));
}

std::shared_ptr<SparseSelfAttentionImpl> SparseSelfAttentionImpl::exact(int64_t heads, bool causal, int64_t block) {
  return std::shared_ptr<SparseSelfAttentionImpl>(new SparseSelfAttentionImpl(Exact{}, heads, causal, block));
}

void SparseSelfAttentionImpl::keep_heads(int64_t first, int64_t count) {
  if (first < 0 || count < 1 || first + count > heads_)
    throw ConfigError(ds::str("SparseSelfAttention: heads [", first, ", ", first + count, ") are not within the layout's ",
                              heads_, " heads"));
  first_ = first, count_ = count;
  plans_.clear();
}

SparsePlan SparseSelfAttentionImpl::plan(int64_t T) {
  // Exact attention: lengths with the same number of blocks share a plan (the last block may
  // be partial). A sparse layout holds only multiples of its block (make_layout refuses the
  // rest), so it is kept per length.
  const int64_t block = config_.enabled ? config_.block : std::min(exact_block_, T);
  const std::pair<int64_t, int64_t> key{block, config_.enabled || block < 1 ? T : (T + block - 1) / block};
  auto it = plans_.find(key);
  if (it == plans_.end()) {
    SparsePlan made = config_.enabled
                          ? plan_block_sparse(make_layout(config_, heads_, T, seed_).narrow(0, first_, count_), block)
                          : plan_block_sparse(full_layout(count_, T, block, causal_), block);
    if (plans_.size() >= kMaxPlans)
      plans_.erase(std::min_element(plans_.begin(), plans_.end(), [](const auto& a, const auto& b) {
        return a.second.last_use < b.second.last_use;
      }));
    it = plans_.emplace(key, Cached{std::move(made), 0}).first;
  }
  it->second.last_use = ++uses_;
  return it->second.plan;
}

at::Tensor SparseSelfAttentionImpl::forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                            const at::Tensor& key_padding_mask, const at::Tensor& attn_mask) {
  if (q.dim() != 4 || q.size(1) != count_)
    throw Error(ds::str("SparseSelfAttention: q is ", q.sizes(), ", expected [batch, ", count_, " heads, seq, width]"));
  AttentionOptions o;
  o.causal = causal_;
  o.key_padding_mask = key_padding_mask;
  o.attn_mask = attn_mask;
  return block_sparse_attention(q, k, v, plan(q.size(2)), o);
}

std::string SparseSelfAttentionImpl::describe(int64_t T) const {
  if (!config_.enabled)
    return ds::str("exact ", causal_ ? "causal " : "", "attention in blocks of ", std::min(exact_block_, T), " (fused ",
                   kernel_target(), " kernels; memory grows with the context, not its square)");
  return ds::str(sparse_mode_name(config_.mode), " block-sparse attention in blocks of ", config_.block, " (fused ",
                 kernel_target(), " kernels)");
}

}  // namespace ds::sparse
