// The optimizer step of every FlatOptimizer (ds::optim::make_optimizer, as the engine runs it on
// one flat master) in parameters per second, with a memory-bandwidth probe of the same run:
// the SIMD kernels (Adam, AdamW, Adagrad, Lion), Lamb's two fused passes and SGD in ATen ops.
//
//   build/bench/optimizer_bench                    # 20M parameters, 2 threads, median of 7
//   build/bench/optimizer_bench --size 100000000 --threads 1 --reps 5
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <vector>

#include "args.h"
#include "ds/common/error.h"
#include "ds/config/config.h"
#include "ds/optim/optimizer.h"

namespace {

double seconds_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  using ds::bench::arg;
  const int64_t n = arg(argc, argv, "--size", 20'000'000), reps = arg(argc, argv, "--reps", 7);
  at::set_num_threads(int(arg(argc, argv, "--threads", 2)));  // before the optimizers size their pools
  // Bandwidth: a copy of n floats reads and writes 8 bytes per element.
  at::Tensor a = at::randn({n}), b = at::empty({n});
  std::vector<double> copy;
  for (int64_t r = 0; r < reps; ++r) {
    const auto t = std::chrono::steady_clock::now();
    b.copy_(a);
    copy.push_back(seconds_since(t));
  }
  const double bandwidth = 8.0 * double(n) / median(copy);
  std::printf("optimizer_bench: %lld parameters, %d threads, median of %lld; copy %.1f GB/s\n", (long long)n,
              at::get_num_threads(), (long long)reps, bandwidth / 1e9);
  for (const char* type : {"Adam", "AdamW", "Adagrad", "Lion", "Lamb", "SGD"}) {
    const ds::Config c = ds::Config::parse(
        ds::str(R"({"optimizer": {"type": ")", type, R"(", "params": {"lr": 0.001, "weight_decay": 0.01)",
                std::string(type) == "SGD" ? R"(, "momentum": 0.9)" : "", "}}}"));
    auto opt = ds::optim::make_optimizer(c.optimizer);
    at::Tensor w = at::randn({n}), g = at::randn({n});
    std::vector<at::Tensor> states = opt->init_state(n);
    std::vector<double> times;
    for (int64_t r = 0; r <= reps; ++r) {  // the first is a warm-up
      const auto t = std::chrono::steady_clock::now();
      opt->step(w, g, states, {r + 1, 0.001, std::nullopt});
      if (r > 0) times.push_back(seconds_since(t));
    }
    const double s = median(times);
    std::printf("  %-38s %8.1f ms  %6.2f G params/s\n", opt->name().c_str(), s * 1e3, double(n) / s / 1e9);
  }
  return 0;
}
