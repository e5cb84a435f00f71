// A model that honours the config's `sparse_attention` section derives from this and says so;
// the engine refuses the section for any other model (a key nobody honours is an error).
// ds::Gpt does when its GptConfig carries the section (and the pipeline's PipelineModule when a
// layer spec says so); a model of your own computes its attention with
// ds::sparse::SparseSelfAttention(config.sparse_attention, heads, seed) (ds/sparse/self_attention.h)
// and returns true.
#pragma once

namespace ds::nn {

class SparseAttentionUser {
 public:
  virtual ~SparseAttentionUser() = default;
  virtual bool uses_sparse_attention() const = 0;
};

}  // namespace ds::nn
