#include "ds/seq/ulysses.h"

#include <ATen/ATen.h>

#include "../tp/autograd.h"
#include "ds/common/error.h"
#include "ds/common/strings.h"

namespace ds::seq {

namespace {

bool alone(const Group& g) { return !g || g->size() == 1; }

int64_t wrap(const at::Tensor& x, int64_t dim) { return dim < 0 ? dim + x.dim() : dim; }

// The shape of `x` with dimension `dim` split into [n, size / n].
std::vector<int64_t> split_shape(const at::Tensor& x, int64_t dim, int64_t n, const char* what) {
  if (x.size(dim) % n != 0)
    throw Error(ds::str("sequence parallel ", what, ": dimension ", dim, " of ", x.sizes(), " does not divide over ", n,
                        " ranks"));
  std::vector<int64_t> shape = x.sizes().vec();
  shape[size_t(dim)] /= n;
  shape.insert(shape.begin() + dim, n);
  return shape;
}

// [n, chunk...] (chunk i from rank i) joined along `dim` of the chunk, rank-major.
at::Tensor join(const at::Tensor& parts, int64_t dim) {
  std::vector<int64_t> shape = parts.sizes().vec();
  shape.erase(shape.begin());
  shape[size_t(dim)] *= parts.size(0);
  return parts.movedim(0, dim).reshape(shape);
}

at::Tensor exchange(const at::Tensor& x, const Group& g, int64_t scatter, int64_t gather) {
  const int64_t n = g->size();
  at::Tensor in = x.detach().reshape(split_shape(x, scatter, n, "all-to-all")).movedim(scatter, 0).contiguous();
  at::Tensor out = at::empty_like(in);
  at::Tensor flat_out = out.view({-1});
  g->all_to_all(flat_out, in.view({-1})).wait();
  return join(out, gather).contiguous();
}

at::Tensor own_slice(const at::Tensor& x, const Group& g, int64_t dim) {
  const int64_t n = g->size();
  split_shape(x, dim, n, "slice");  // checks divisibility
  const int64_t len = x.size(dim) / n;
  return x.detach().narrow(dim, g->rank() * len, len).contiguous();
}

at::Tensor all_gather(const at::Tensor& x, const Group& g, int64_t dim) {
  at::Tensor in = x.detach().contiguous();
  std::vector<int64_t> shape = in.sizes().vec();
  shape.insert(shape.begin(), g->size());
  at::Tensor parts = at::empty(shape, in.options());
  at::Tensor flat = parts.view({-1});
  g->all_gather(flat, in.view({-1})).wait();
  return join(parts, dim).contiguous();
}

}  // namespace

at::Tensor all_to_all(const at::Tensor& x, const Group& group, int64_t scatter_dim, int64_t gather_dim) {
  if (alone(group)) return x;
  const int64_t s = wrap(x, scatter_dim), g = wrap(x, gather_dim);
  return tp::detail::with_backward(
      exchange(x, group, s, g), x, [group, s, g](const at::Tensor& grad) { return exchange(grad, group, g, s); },
      "ds::seq::AllToAllBackward");
}

at::Tensor slice(const at::Tensor& x, const Group& group, int64_t dim) {
  if (alone(group)) return x;
  const int64_t d = wrap(x, dim);
  return tp::detail::with_backward(
      own_slice(x, group, d), x, [group, d](const at::Tensor& grad) { return all_gather(grad, group, d); },
      "ds::seq::SliceBackward");
}

at::Tensor gather(const at::Tensor& x, const Group& group, int64_t dim) {
  if (alone(group)) return x;
  const int64_t d = wrap(x, dim);
  return tp::detail::with_backward(
      all_gather(x, group, d), x, [group, d](const at::Tensor& grad) { return own_slice(grad, group, d); },
      "ds::seq::GatherBackward");
}

int64_t first_position(int64_t local, const Group& group) { return alone(group) ? 0 : local * group->rank(); }

}  // namespace ds::seq
