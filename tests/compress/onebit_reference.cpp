#include "onebit_reference.h"

#include <algorithm>
#include <cmath>

namespace ds::compress {

at::Tensor input(int r, int t, int64_t n) {
  return at::sin(at::arange(n, at::kFloat) * (0.3 + 0.11 * r) + t) * (1.0 + r) + 0.05 * t;
}

std::vector<at::Tensor> closed_form(int W, int64_t n, int calls) {
  const int64_t N = (n + 8 * W - 1) / (8 * W) * (8 * W), L = N / W;
  auto sign = [](const at::Tensor& x) { return at::where(x >= 0, 1.0f, -1.0f); };
  std::vector<at::Tensor> worker(size_t(W), at::zeros({n})), server(size_t(W), at::zeros({L}));
  std::vector<at::Tensor> out;
  for (int t = 0; t < calls; ++t) {
    at::Tensor sum = at::zeros({N});
    for (int r = 0; r < W; ++r) {
      at::Tensor v = input(r, t, n) + worker[size_t(r)];
      const double s = v.norm().item<double>() / std::sqrt(double(n));
      worker[size_t(r)] = v - sign(v) * s;
      at::Tensor padded = at::zeros({N});
      padded.narrow(0, 0, n).copy_(v);
      sum += sign(padded) * float(s);
    }
    at::Tensor result = at::zeros({N});
    for (int c = 0; c < W; ++c) {
      const int64_t real = std::clamp<int64_t>(n - c * L, 0, L);
      at::Tensor m = sum.narrow(0, c * L, L) / double(W) + server[size_t(c)];
      const double s = real ? m.narrow(0, 0, real).norm().item<double>() / std::sqrt(double(real)) : 0.0;
      at::Tensor e = at::zeros({L});
      e.narrow(0, 0, real).copy_((m - sign(m) * s).narrow(0, 0, real));
      server[size_t(c)] = e;
      result.narrow(0, c * L, L).copy_(sign(m) * s);
    }
    out.push_back(result.narrow(0, 0, n).clone());
  }
  return out;
}

}  // namespace ds::compress
