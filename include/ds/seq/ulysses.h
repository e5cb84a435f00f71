// Ulysses sequence parallelism (DeepSpeed-Ulysses, arXiv:2309.14509) as autograd operations
// over the sequence group. Each of its s ranks holds a slice of T/s tokens of every sequence.
// Around attention, one all-to-all gives each rank every token of H/s of the heads, and one
// more gives the tokens back:
//
//   at::Tensor qkv = ...;                                        // [B, T/s, 3, H, hd]  own tokens
//   at::Tensor full = ds::seq::all_to_all(qkv, group, 3, 1);     // [B, T, 3, H/s, hd]  own heads
//   ... causal attention over all T tokens of these heads ...    // y: [B, T, H/s, hd]
//   at::Tensor mine = ds::seq::all_to_all(y, group, 1, 2);       // [B, T/s, H, hd]
//
// Every rank of the group must call the same operations in the same order (they are
// collectives); with a group of one rank each is the identity. Rank r's tokens are positions
// [r T/s, (r + 1) T/s) of the sequence (slice() and gather() keep that order).
#pragma once

#include <ATen/core/Tensor.h>

#include <memory>

#include "ds/comm/communicator.h"

namespace ds::seq {

using Group = std::shared_ptr<comm::Communicator>;

// Splits x into size() equal chunks along scatter_dim, sends chunk j to rank j, and joins the
// chunks it receives along gather_dim, rank 0's first. Its gradient is the inverse exchange.
// Throws ds::Error when x.size(scatter_dim) is not divisible by the group's size.
at::Tensor all_to_all(const at::Tensor& x, const Group& group, int64_t scatter_dim, int64_t gather_dim);
// This rank's slice of dimension `dim` of a tensor every rank of the group holds alike (its
// gradient: every rank's gradient slices joined), and the inverse: every rank's slices joined
// along `dim` (its gradient: this rank's slice).
at::Tensor slice(const at::Tensor& x, const Group& group, int64_t dim);
at::Tensor gather(const at::Tensor& x, const Group& group, int64_t dim);
// The first position of this rank's slice of a sequence of `local` tokens per rank.
int64_t first_position(int64_t local, const Group& group);

}  // namespace ds::seq
