// ZeRO++'s int8 blocks (ds/compress/quantize.h) on one core: quantizing and dequantizing a
// buffer of fp32 values (and bf16), against a copy of the same buffer as the memory-bandwidth
// probe of the same run. What qwZ and qgZ add per gathered or reduced value.
//
//   build/bench/quantize_bench                  # 13M values (GPT 4 x 256 in fp32 is 3.3M), median of 7
//   build/bench/quantize_bench --size 100000000 --reps 5
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <vector>

#include "args.h"
#include "ds/compress/quantize.h"

namespace {

double median_seconds(int64_t reps, const std::function<void()>& f) {
  std::vector<double> times;
  for (int64_t r = 0; r <= reps; ++r) {  // the first is a warm-up
    const auto t = std::chrono::steady_clock::now();
    f();
    if (r > 0) times.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count());
  }
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  using ds::bench::arg;
  const int64_t n = arg(argc, argv, "--size", 13'000'000), reps = arg(argc, argv, "--reps", 7);
  at::set_num_threads(1);
  const int64_t group = ds::compress::kZeroPlusPlusGroup;
  at::Tensor x = at::randn({n}), copy = at::empty({n}), out = at::empty({n}), acc = at::zeros({n});
  at::Tensor packed = at::empty({ds::compress::Int8Blocks{n, group}.bytes()}, at::kByte);
  const double copy_s = median_seconds(reps, [&] { copy.copy_(x); });
  std::printf("quantize_bench: %lld values, groups of %lld, 1 thread, median of %lld; copy %.1f GB/s (%.1f ms)\n",
              (long long)n, (long long)group, (long long)reps, 8.0 * double(n) / copy_s / 1e9, copy_s * 1e3);
  auto report = [&](const char* what, double s, double bytes_per_value) {
    std::printf("  %-28s %7.1f ms  %6.2f GB/s  %5.2fx the copy's time\n", what, s * 1e3,
                bytes_per_value * double(n) / s / 1e9, s / copy_s);
  };
  report("quantize fp32", median_seconds(reps, [&] { ds::compress::quantize_int8(x, group, packed); }), 5.0);
  report("dequantize into fp32", median_seconds(reps, [&] { ds::compress::dequantize_int8(packed, group, out); }), 5.0);
  report("dequantize-accumulate fp32",
         median_seconds(reps, [&] { ds::compress::dequantize_int8(packed, group, acc, true, 0.5f); }), 9.0);
  at::Tensor xb = x.to(at::kBFloat16), outb = at::empty({n}, at::kBFloat16);
  report("quantize bf16", median_seconds(reps, [&] { ds::compress::quantize_int8(xb, group, packed); }), 3.0);
  report("dequantize into bf16", median_seconds(reps, [&] { ds::compress::dequantize_int8(packed, group, outb); }), 3.0);
  return 0;
}
