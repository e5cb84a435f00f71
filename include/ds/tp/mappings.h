// Megatron-LM's four tensor-parallel mappings as autograd operations over the tensor group:
//
//   copy_to      forward: identity            backward: all-reduce (sum) of the gradient
//   reduce_from  forward: all-reduce (sum)    backward: identity
//   scatter_to   forward: this rank's chunk of the last dimension   backward: all-gather it
//   gather_from  forward: all-gather along the last dimension       backward: this rank's chunk
//
// A column-parallel linear starts with copy_to (its input is replicated, its gradient is the
// sum of every shard's), a row-parallel one ends with reduce_from (each rank holds a partial
// sum). With a group of one rank each is the identity. Every rank of the group must call the
// same mappings in the same order (they are collectives).
//
//   at::Tensor h = ds::tp::copy_to(x, tensor);                     // [B, T, d]
//   at::Tensor y = ds::tp::reduce_from(ds::nn::linear(part(h), w_row), tensor);
#pragma once

#include <ATen/core/Tensor.h>

#include <memory>

#include "ds/comm/communicator.h"

namespace ds::tp {

using Group = std::shared_ptr<comm::Communicator>;

at::Tensor copy_to(const at::Tensor& x, const Group& group);
at::Tensor reduce_from(const at::Tensor& x, const Group& group);
// The last dimension must be divisible by the group's size.
at::Tensor scatter_to(const at::Tensor& x, const Group& group);
at::Tensor gather_from(const at::Tensor& x, const Group& group);

// Rank r's part [r * n / size, (r + 1) * n / size) of `n` elements; throws ds::ConfigError
// naming `what` when size does not divide n.
struct Slice {
  int64_t begin = 0, length = 0;
};
Slice slice_of(int64_t n, const Group& group, const std::string& what);

}  // namespace ds::tp
