// GEMM throughput of this CPU through LibTorch, fp32 against bf16 (and fp16), measured in one
// run: the ceiling that model FLOP utilisation is measured against, and the ratio that decides
// whether computing in bf16 pays (docs/BENCHMARKS.md). Prints the CPU's features as detected.
//
//   build/bench/gemm_bench [--n 1024] [--threads 2]
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "ds/common/cpu.h"
#include "ds/common/openmp_env.h"

namespace {

int64_t arg(int argc, char** argv, const char* name, int64_t fallback) {
  for (int i = 1; i + 1 < argc; ++i)
    if (!std::strcmp(argv[i], name)) return std::atoll(argv[i + 1]);
  return fallback;
}

// n x n x n at::mm in `dtype`, GFLOP/s: median of 5 after a warm-up.
double gflops(int64_t n, at::ScalarType dtype) {
  const at::Tensor a = at::randn({n, n}).to(dtype), b = at::randn({n, n}).to(dtype);
  at::mm(a, b);
  std::vector<double> t;
  for (int i = 0; i < 5; ++i) {
    const auto s = std::chrono::steady_clock::now();
    at::mm(a, b);
    t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - s).count());
  }
  std::sort(t.begin(), t.end());
  return 2.0 * double(n) * double(n) * double(n) / t[2] / 1e9;
}

}  // namespace

int main(int argc, char** argv) {
  ds::ensure_passive_openmp(argv);
  const int64_t n = arg(argc, argv, "--n", 1024);
  at::set_num_threads(int(arg(argc, argv, "--threads", 2)));
  const double f32 = gflops(n, at::kFloat), bf16 = gflops(n, at::kBFloat16), f16 = gflops(n, at::kHalf);
  std::printf("gemm_bench: %s; %d threads; at::mm %lld^3: fp32 %.0f GFLOP/s, bf16 %.0f GFLOP/s (%.2fx fp32), "
              "fp16 %.0f GFLOP/s (%.2fx)\n",
              ds::cpu_features().describe().c_str(), at::get_num_threads(), (long long)n, f32, bf16, bf16 / f32, f16,
              f16 / f32);
  return 0;
}
