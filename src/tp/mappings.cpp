#include "ds/tp/mappings.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/csrc/autograd/grad_mode.h>

#include "ds/common/error.h"
#include "ds/common/strings.h"
#include "autograd.h"

namespace ds::tp {

namespace {

at::Tensor all_reduce_copy(const at::Tensor& x, const Group& g) {
  at::Tensor out = x.detach().contiguous().clone();
  g->all_reduce(out, comm::ReduceOp::Sum).wait();
  return out;
}

at::Tensor own_chunk(const at::Tensor& x, const Group& g) {
  const int64_t last = x.size(-1), n = g->size();
  if (last % n != 0)
    throw Error(ds::str("tensor parallel: the last dimension ", last, " does not divide over ", n, " ranks"));
  return x.detach().narrow(-1, g->rank() * (last / n), last / n).contiguous();
}

// [..., n] from every rank -> [..., size * n], rank-major along the last dimension.
at::Tensor all_gather_last(const at::Tensor& x, const Group& g) {
  const int64_t n = g->size();
  at::Tensor in = x.detach().contiguous();
  at::Tensor flat = at::empty({n * in.numel()}, in.options());
  at::Tensor src = in.reshape({-1});
  g->all_gather(flat, src).wait();
  std::vector<int64_t> shape{n};
  for (int64_t d : in.sizes()) shape.push_back(d);
  at::Tensor parts = flat.view(shape).movedim(0, -2);  // [..., size, n]
  std::vector<int64_t> out_shape(in.sizes().begin(), in.sizes().end());
  out_shape.back() *= n;
  return parts.reshape(out_shape);
}

}  // namespace

at::Tensor copy_to(const at::Tensor& x, const Group& group) {
  if (!group || group->size() == 1) return x;
  at::Tensor out = x.detach().clone();
  return detail::with_backward(out, x, [group](const at::Tensor& g) { return all_reduce_copy(g, group); },
                               "ds::tp::CopyToBackward");
}

at::Tensor reduce_from(const at::Tensor& x, const Group& group) {
  if (!group || group->size() == 1) return x;
  return detail::with_backward(all_reduce_copy(x, group), x, [](const at::Tensor& g) { return g; },
                               "ds::tp::ReduceFromBackward");
}

at::Tensor scatter_to(const at::Tensor& x, const Group& group) {
  if (!group || group->size() == 1) return x;
  return detail::with_backward(own_chunk(x, group), x, [group](const at::Tensor& g) { return all_gather_last(g, group); },
                               "ds::tp::ScatterToBackward");
}

at::Tensor gather_from(const at::Tensor& x, const Group& group) {
  if (!group || group->size() == 1) return x;
  return detail::with_backward(all_gather_last(x, group), x, [group](const at::Tensor& g) { return own_chunk(g, group); },
                               "ds::tp::GatherFromBackward");
}

Slice slice_of(int64_t n, const Group& group, const std::string& what) {
  const int64_t size = group ? group->size() : 1, rank = group ? group->rank() : 0;
  if (n % size != 0)
    throw ConfigError(ds::str("tensor_parallel.autotp_size ", size, " does not divide ", what, " ", n,
                              ": use a size that divides it"));
  return {rank * (n / size), n / size};
}

}  // namespace ds::tp
