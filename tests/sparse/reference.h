// What the block-sparse attention tests compare against: plain attention written out over a
// dense "may attend" mask, and a run that returns the output with q/k/v gradients.
#pragma once

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>

#include "ds/config/sections.h"

namespace ds::sparse::test {

// Plain attention over a [B or 1, H, T, T] "may attend" mask, written out here (not the
// library's dense path).
inline at::Tensor reference(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& allowed,
                     const at::Tensor& additive = {}) {
  at::Tensor s = at::matmul(q, k.transpose(-1, -2)) / std::sqrt(double(q.size(-1)));
  if (additive.defined()) s = s + additive;
  s = s.masked_fill(allowed.logical_not(), -std::numeric_limits<double>::infinity());
  at::Tensor p = at::softmax(s, -1);
  p = at::where(allowed.any(-1, true).expand_as(p), p, at::zeros_like(p));  // no key: zeros
  return at::matmul(p, v);
}

struct Grads {
  at::Tensor out, dq, dk, dv;
};

template <typename F>
Grads run(const at::Tensor& q0, const at::Tensor& k0, const at::Tensor& v0, const at::Tensor& dy, F f) {
  at::Tensor q = q0.clone().requires_grad_(), k = k0.clone().requires_grad_(), v = v0.clone().requires_grad_();
  at::Tensor out = f(q, k, v);
  out.backward(dy);
  return {out.detach(), q.grad(), k.grad(), v.grad()};
}

inline void expect_close(const Grads& a, const Grads& b, const std::string& what, double tol = 1e-5) {
  EXPECT_LT((a.out - b.out).abs().max().item<double>(), tol) << what << " output";
  EXPECT_LT((a.dq - b.dq).abs().max().item<double>(), tol) << what << " dq";
  EXPECT_LT((a.dk - b.dk).abs().max().item<double>(), tol) << what << " dk";
  EXPECT_LT((a.dv - b.dv).abs().max().item<double>(), tol) << what << " dv";
  EXPECT_FALSE(a.dq.isnan().any().item<bool>()) << what;
}

inline SparseAttentionConfig mode(SparseMode m, SparseDirection dir) {
  SparseAttentionConfig c;
  c.enabled = true, c.mode = m, c.attention = dir;
  c.num_local_blocks = 2, c.num_global_blocks = 1, c.num_random_blocks = 1, c.num_sliding_window_blocks = 3;
  c.local_window_blocks = {1, 2};
  c.different_layout_per_head = true;
  return c;
}

}  // namespace ds::sparse::test
