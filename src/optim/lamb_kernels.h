// Private to src/optim: Lamb's two fused passes over a range of fp32 elements (lamb_kernels.cpp,
// no LibTorch, vectorised with `omp simd`). Each moves the data once.
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

}  // namespace ds::optim::detail
