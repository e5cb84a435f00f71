#include "ds/tp/layers.h"

#include <ATen/ATen.h>
#include <torch/nn/functional/embedding.h>

#include "autograd.h"
#include "ds/common/error.h"
#include "ds/common/strings.h"
#include "ds/nn/linear.h"

namespace ds::tp {

std::vector<Split> find_sharded_parameters(const torch::nn::Module& model) {
  std::vector<Split> out;
  auto add = [&](const torch::nn::Module& m, const std::string& prefix) {
    if (const auto* s = dynamic_cast<const ShardedParameters*>(&m))
      for (Split split : s->sharded_parameters()) {
        split.name = prefix + split.name;
        out.push_back(split);
      }
  };
  add(model, "");
  for (const auto& item : model.named_modules("", /*include_self=*/false)) add(*item.value(), item.key() + ".");
  return out;
}

at::Tensor take_slice(const at::Tensor& full, int dim, const Group& group, const std::string& what) {
  const Slice s = slice_of(full.size(dim), group, what);
  return full.detach().narrow(dim, s.begin, s.length).clone();
}

ColumnParallelLinearImpl::ColumnParallelLinearImpl(const at::Tensor& w, const at::Tensor& b, Group group, bool gather_output)
    : group_(std::move(group)), gather_output_(gather_output) {
  weight = register_parameter("weight", take_slice(w, 0, group_, "the output width"));
  if (b.defined()) bias = register_parameter("bias", take_slice(b, 0, group_, "the output width"));
}

at::Tensor ColumnParallelLinearImpl::forward(const at::Tensor& x) {
  at::Tensor y = nn::linear(copy_to(x, group_), weight, bias);
  return gather_output_ ? gather_from(y, group_) : y;
}

std::vector<Split> ColumnParallelLinearImpl::sharded_parameters() const {
  if (bias.defined()) return {{"weight", 0}, {"bias", 0}};
  return {{"weight", 0}};
}

RowParallelLinearImpl::RowParallelLinearImpl(const at::Tensor& w, const at::Tensor& b, Group group, bool input_is_parallel)
    : group_(std::move(group)), input_is_parallel_(input_is_parallel) {
  weight = register_parameter("weight", take_slice(w, 1, group_, "the input width"));
  if (b.defined()) bias = register_parameter("bias", b.detach().clone());
}

at::Tensor RowParallelLinearImpl::forward(const at::Tensor& x) {
  at::Tensor y = reduce_from(nn::linear(input_is_parallel_ ? x : scatter_to(x, group_), weight), group_);
  return bias.defined() ? y + bias : y;
}

std::vector<Split> RowParallelLinearImpl::sharded_parameters() const { return {{"weight", 1}}; }

VocabParallelEmbeddingImpl::VocabParallelEmbeddingImpl(const at::Tensor& w, Group group)
    : group_(std::move(group)), vocab_(w.size(0)) {
  begin_ = slice_of(vocab_, group_, "the vocabulary").begin;
  weight = register_parameter("weight", take_slice(w, 0, group_, "the vocabulary"));
}

at::Tensor VocabParallelEmbeddingImpl::forward(const at::Tensor& tokens) {
  if (!group_ || group_->size() == 1) return at::embedding(weight, tokens);
  const int64_t end = begin_ + weight.size(0);
  at::Tensor outside = (tokens < begin_).logical_or(tokens >= end);
  at::Tensor local = (tokens - begin_).masked_fill(outside, 0);
  at::Tensor rows = at::embedding(weight, local).masked_fill(outside.unsqueeze(-1), 0.0);
  return reduce_from(rows, group_);
}

std::vector<Split> VocabParallelEmbeddingImpl::sharded_parameters() const { return {{"weight", 0}}; }

at::Tensor vocab_parallel_cross_entropy(const at::Tensor& logits_in, const at::Tensor& targets_in, const Group& group,
                                        int64_t ignore_index) {
  const int64_t part = logits_in.size(-1);
  const int64_t begin = group ? group->rank() * part : 0;
  at::Tensor logits = logits_in.detach().to(at::kFloat).reshape({-1, part});
  at::Tensor targets = targets_in.reshape({-1});
  auto sum = [&](at::Tensor t, comm::ReduceOp op) {
    if (group && group->size() > 1) group->all_reduce(t, op).wait();
    return t;
  };
  at::Tensor max = sum(std::get<0>(logits.max(-1)).contiguous(), comm::ReduceOp::Max);
  at::Tensor z = logits - max.unsqueeze(-1);
  at::Tensor counted = targets != ignore_index;
  at::Tensor mine = counted.logical_and(targets >= begin).logical_and(targets < begin + part);
  at::Tensor local = (targets - begin).masked_fill(mine.logical_not(), 0);
  at::Tensor target_logit = sum(z.gather(1, local.unsqueeze(1)).squeeze(1).masked_fill(mine.logical_not(), 0.0).contiguous(),
                                comm::ReduceOp::Sum);
  at::Tensor exp = z.exp();
  at::Tensor exp_sum = sum(exp.sum(-1).contiguous(), comm::ReduceOp::Sum);
  const double n = std::max<int64_t>(1, counted.sum().item<int64_t>());
  at::Tensor loss = ((exp_sum.log() - target_logit).masked_fill(counted.logical_not(), 0.0).sum() / n);
  // d loss / d logits_r = (softmax_r - onehot_r) / n on counted rows.
  at::Tensor softmax = exp / exp_sum.unsqueeze(-1);
  return detail::with_backward(
      loss, logits_in,
      [softmax, mine, local, counted, n, shape = logits_in.sizes().vec(), dtype = logits_in.scalar_type()](
          const at::Tensor& grad) {
        at::Tensor g = softmax.clone();
        g.scatter_add_(1, local.unsqueeze(1), -mine.to(at::kFloat).unsqueeze(1));
        g.mul_(counted.to(at::kFloat).unsqueeze(1)).mul_(grad.to(at::kFloat) / n);
        return g.reshape(shape).to(dtype);
      },
      "ds::tp::VocabParallelCrossEntropyBackward");
}

}  // namespace ds::tp
