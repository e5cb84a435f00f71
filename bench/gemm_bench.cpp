// GEMM throughput of this CPU through LibTorch, fp32 against bf16 (and fp16), measured in one
// run: the ceiling that model FLOP utilisation is measured against, and the ratio that decides
// whether computing in bf16 pays (docs/BENCHMARKS.md). Prints the CPU's features as detected.
//
//   build/bench/gemm_bench [--n 1024] [--threads 2] [--rounds 9]
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "ds/common/cpu.h"
#include "ds/common/openmp_env.h"
#include "ds/common/error.h"

namespace {

int64_t arg(int argc, char** argv, const char* name, int64_t fallback) {
  for (int i = 1; i + 1 < argc; ++i)
    if (!std::strcmp(argv[i], name)) return std::atoll(argv[i + 1]);
  return fallback;
}

// GFLOP/s of n x n x n at::mm for each dtype: every dtype warmed up, then `rounds` timings
// taken alternately (so a noisy moment on a shared machine hits all of them), the median of each.
// A dtype LibTorch has no CPU kernel for reports -1.
std::vector<double> gflops(int64_t n, const std::vector<at::ScalarType>& dtypes, int rounds) {
  std::vector<std::pair<at::Tensor, at::Tensor>> in;
  std::vector<std::vector<double>> t(dtypes.size());
  for (at::ScalarType d : dtypes) {
    in.emplace_back(at::randn({n, n}).to(d), at::randn({n, n}).to(d));
    try {
      for (int i = 0; i < 2; ++i) at::mm(in.back().first, in.back().second);
    } catch (const c10::Error&) {
      in.back() = {};
    }
  }
  for (int r = 0; r < rounds; ++r)
    for (size_t k = 0; k < dtypes.size(); ++k) {
      if (!in[k].first.defined()) continue;
      const auto s = std::chrono::steady_clock::now();
      at::mm(in[k].first, in[k].second);
      t[k].push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - s).count());
    }
  std::vector<double> out;
  for (auto& v : t) {
    if (v.empty()) {
      out.push_back(-1);
      continue;
    }
    std::sort(v.begin(), v.end());
    out.push_back(2.0 * double(n) * double(n) * double(n) / v[v.size() / 2] / 1e9);
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  ds::ensure_passive_openmp(argv);
  const int64_t n = arg(argc, argv, "--n", 1024);
  at::set_num_threads(int(arg(argc, argv, "--threads", 2)));
  const std::vector<double> g = gflops(n, {at::kFloat, at::kBFloat16, at::kHalf}, int(arg(argc, argv, "--rounds", 9)));
  const double f32 = g[0], bf16 = g[1];
  const std::string f16 =
      g[2] < 0 ? "not implemented by this LibTorch's CPU kernels" : ds::str(int64_t(g[2]), " GFLOP/s (", g[2] / f32, "x fp32)");
  std::printf("gemm_bench: %s; %d threads; at::mm %lld^3: fp32 %.0f GFLOP/s, bf16 %.0f GFLOP/s (%.2fx fp32), fp16 %s\n",
              ds::cpu_features().describe().c_str(), at::get_num_threads(), (long long)n, f32, bf16, bf16 / f32,
              f16.c_str());
  return 0;
}
