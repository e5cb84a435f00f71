// Megatron-LM's tensor-parallel layers on the mappings of mappings.h, and the vocab-parallel
// cross-entropy. Each is built from the whole layer's weights (the same on every rank of the
// tensor group, e.g. from one seed) and keeps its own slice, so a model split over any group
// size starts from the weights of the unsplit one.
//
//   ColumnParallelLinear   W [out/t, in]:  y_r = copy_to(x) W_r^T + b_r   (output split over the group)
//   RowParallelLinear      W [out, in/t]:  y = reduce_from(x_r W_r^T) + b  (input split, bias whole)
//   VocabParallelEmbedding W [V/t, d]:     each rank looks up its rows, zero elsewhere, reduce_from
//   vocab_parallel_cross_entropy(logits_r [..., V/t], targets): the loss of the whole logits
//     from the ranks' slices (max, target logit and exp-sum all-reduced), never gathering them
//
// Modules that hold slices say which of their parameters are split (ShardedParameters): the
// engine counts a split parameter's gradient on every rank of the group and a replicated one
// (a LayerNorm, a row-parallel bias) once, for the global norm.
#pragma once

#include <torch/nn/module.h>

#include <string>
#include <utility>
#include <vector>

#include "ds/tp/mappings.h"

namespace ds::tp {

// How a parameter is split over the tensor group: rank r holds slice r of `dim`. With
// groups g > 1 the dimension is g equal blocks (a fused q/k/v weight: g = 3) and rank r holds
// slice r of each block, in block order.
struct Split {
  std::string name;
  int dim = 0;
  int groups = 1;
  bool operator==(const Split& o) const { return name == o.name && dim == o.dim && groups == o.groups; }
};

// Implemented by modules whose parameters are split over the tensor group.
class ShardedParameters {
 public:
  virtual ~ShardedParameters() = default;
  // Names relative to the module.
  virtual std::vector<Split> sharded_parameters() const = 0;
};

// Every split parameter of `model`, under its full name (as in model.named_parameters()).
std::vector<Split> find_sharded_parameters(const torch::nn::Module& model);

// Rows [r * n/t, (r + 1) * n/t) of `full` along `dim`, as a new parameter tensor.
at::Tensor take_slice(const at::Tensor& full, int dim, const Group& group, const std::string& what);

class ColumnParallelLinearImpl : public torch::nn::Module, public ShardedParameters {
 public:
  // weight: the whole [out, in] weight, bias: [out] (or undefined).
  ColumnParallelLinearImpl(const at::Tensor& weight, const at::Tensor& bias, Group group, bool gather_output = false);
  at::Tensor forward(const at::Tensor& x);
  std::vector<Split> sharded_parameters() const override;
  at::Tensor weight, bias;

 private:
  Group group_;
  bool gather_output_;
};

class RowParallelLinearImpl : public torch::nn::Module, public ShardedParameters {
 public:
  // weight: the whole [out, in] weight, bias: [out] (or undefined). input_is_parallel: x is
  // already this rank's slice of the last dimension (a column-parallel layer's output).
  RowParallelLinearImpl(const at::Tensor& weight, const at::Tensor& bias, Group group, bool input_is_parallel = true);
  at::Tensor forward(const at::Tensor& x);
  std::vector<Split> sharded_parameters() const override;
  at::Tensor weight, bias;

 private:
  Group group_;
  bool input_is_parallel_;
};

class VocabParallelEmbeddingImpl : public torch::nn::Module, public ShardedParameters {
 public:
  VocabParallelEmbeddingImpl(const at::Tensor& weight, Group group);  // weight: the whole [V, d]
  at::Tensor forward(const at::Tensor& tokens);
  std::vector<Split> sharded_parameters() const override;
  int64_t vocab_begin() const { return begin_; }
  at::Tensor weight;

 private:
  Group group_;
  int64_t begin_ = 0, vocab_ = 0;
};

// logits: this rank's [..., V/t] slice (vocabulary rows [r * V/t, (r + 1) * V/t)); targets:
// [...] token ids of the whole vocabulary, `ignore_index` for none. The mean loss over the
// counted targets, equal on every rank, computed in fp32; its gradient flows to the slice.
at::Tensor vocab_parallel_cross_entropy(const at::Tensor& logits, const at::Tensor& targets, const Group& group,
                                        int64_t ignore_index = -1);

}  // namespace ds::tp
