// Private to src/optim: Lamb's two fused passes over a range of fp32 elements, and 1-bit Lamb's
// compressed-phase pass (lamb_kernels.cpp, no LibTorch, vectorised with `omp simd`). Each
// moves the data once.
#pragma once

#include <cstdint>

namespace ds::optim::detail {

struct LambHyper {
  float b1 = 0.9f, b2 = 0.999f, eps = 1e-8f, weight_decay = 0.0f;
  bool eps_inside_sqrt = false;
};

// m and v updated in place over [0, n) from g; adds sum(w²) and sum(u²) to w2 and u2, with
// u = m / (sqrt(v) + eps) + weight_decay w from the new m and v (w is not changed).
void lamb_moments(const float* w, const float* g, float* m, float* v, int64_t n, const LambHyper& h, double& w2,
                  double& u2);
// w -= step u over [0, n), u recomputed from m and v as above.
void lamb_apply(float* w, const float* m, const float* v, int64_t n, const LambHyper& h, float step);

// 1-bit Lamb, compressed phase, over [0, n): with m the new momentum and last the one before
// it, the reconstructed gradient g = (m - b1 last) / (1 - b1) updates the fresh variance
// v' = b2 v' + (1 - b2) g²; with the frozen v, p = m / (sqrt(v) + eps) and u = p + wd w, adds
// sum(p²) and sum(u²), and raises `factor` to the largest (sqrt(v) + eps) / (sqrt(v') + eps).
// (eps_inside_sqrt is not used: 1-bit Lamb adds eps outside.)
struct OneBitLambSums {
  double prelim2 = 0.0, update2 = 0.0;
  float factor = 0.0f;
};
void onebit_lamb_moments(const float* m, const float* last, const float* v, float* fresh, const float* w, int64_t n,
                         const LambHyper& h, OneBitLambSums& sums);

}  // namespace ds::optim::detail
