#include "lamb_kernels.h"

#include <algorithm>
#include <cmath>

namespace ds::optim::detail {

namespace {

template <bool kInside>
inline float update_of(float w, float m, float v, const LambHyper& h) {
  const float denom = kInside ? std::sqrt(v + h.eps) : std::sqrt(v) + h.eps;
  return m / denom + h.weight_decay * w;
}

template <bool kInside>
void moments(const float* w, const float* g, float* m, float* v, int64_t n, const LambHyper& h, double& w2,
             double& u2) {
  const float c1 = 1.0f - h.b1, c2 = 1.0f - h.b2;
  double sw = 0.0, su = 0.0;
#pragma omp simd reduction(+ : sw, su)
  for (int64_t i = 0; i < n; ++i) {
    const float mi = h.b1 * m[i] + c1 * g[i];
    const float vi = h.b2 * v[i] + c2 * g[i] * g[i];
    m[i] = mi, v[i] = vi;
    const float u = update_of<kInside>(w[i], mi, vi, h);
    sw += double(w[i] * w[i]);
    su += double(u * u);
  }
  w2 += sw, u2 += su;
}

template <bool kInside>
void apply(float* w, const float* m, const float* v, int64_t n, const LambHyper& h, float step) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) w[i] -= step * update_of<kInside>(w[i], m[i], v[i], h);
}

}  // namespace

void lamb_moments(const float* w, const float* g, float* m, float* v, int64_t n, const LambHyper& h, double& w2,
                  double& u2) {
  if (h.eps_inside_sqrt) moments<true>(w, g, m, v, n, h, w2, u2);
  else moments<false>(w, g, m, v, n, h, w2, u2);
}

void lamb_apply(float* w, const float* m, const float* v, int64_t n, const LambHyper& h, float step) {
  if (h.eps_inside_sqrt) apply<true>(w, m, v, n, h, step);
  else apply<false>(w, m, v, n, h, step);
}

void onebit_lamb_moments(const float* m, const float* last, const float* v, float* fresh, const float* w, int64_t n,
                         const LambHyper& h, OneBitLambSums& sums) {
  const float c1 = 1.0f - h.b1, c2 = 1.0f - h.b2;
  double sp = 0.0, su = 0.0;
  float top = sums.factor;
#pragma omp simd reduction(+ : sp, su) reduction(max : top)
  for (int64_t i = 0; i < n; ++i) {
    const float g = (m[i] - last[i] * h.b1) / c1;
    const float f = h.b2 * fresh[i] + c2 * g * g;
    fresh[i] = f;
    const float denom = std::sqrt(v[i]) + h.eps;
    const float p = m[i] / denom, u = p + h.weight_decay * w[i];
    sp += double(p * p);
    su += double(u * u);
    top = std::max(top, denom / (std::sqrt(f) + h.eps));
  }
  sums.prelim2 += sp, sums.update2 += su, sums.factor = top;
}

}  // namespace ds::optim::detail
