// Block-sparse vs dense attention, forward + backward of one layer (docs/BENCHMARKS.md).
//
//   sparse_attention_bench --seq 4096 --heads 1 --width 64 --block 64 --window 3 --reps 3 --dense 1
//
// The layout is bslongformer (a sliding window of --window blocks and global block 0), causal.
// Prints the density, the median time of --reps fwd+bwd runs, the kernel's FLOP rate (the
// kept blocks' GEMMs: 2 in the forward, 4 in the backward), and this process's peak RSS; with
// --dense 1 LibTorch's dense attention with the same mask runs instead (separate processes
// give separate peaks).
#include <ATen/ATen.h>
#include <sys/resource.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <vector>

#include "args.h"
#include "ds/sparse/attention.h"
#include "ds/sparse/layout.h"

int main(int argc, char** argv) {
  using ds::bench::arg;
  const int64_t T = arg(argc, argv, "--seq", 4096), H = arg(argc, argv, "--heads", 1), D = arg(argc, argv, "--width", 64),
                block = arg(argc, argv, "--block", 64), window = arg(argc, argv, "--window", 3),
                reps = arg(argc, argv, "--reps", 3);
  const bool dense = arg(argc, argv, "--dense", 0) != 0;
  ds::SparseAttentionConfig c;
  c.enabled = true, c.mode = ds::SparseMode::kBSLongformer, c.block = block, c.num_sliding_window_blocks = window;
  c.attention = ds::SparseDirection::kUnidirectional;
  const at::Tensor layout = ds::sparse::make_layout(c, H, T);
  const double kept = double(layout.sum().item<int64_t>());
  torch::manual_seed(1);
  ds::sparse::AttentionOptions o;
  o.causal = true;
  std::vector<double> times;
  for (int64_t r = 0; r < reps; ++r) {
    at::Tensor q = at::randn({1, H, T, D}).requires_grad_(), k = at::randn({1, H, T, D}).requires_grad_(),
               v = at::randn({1, H, T, D}).requires_grad_();
    const auto start = std::chrono::steady_clock::now();
    at::Tensor y = dense ? ds::sparse::dense_masked_attention(q, k, v, layout, block, o)
                         : ds::sparse::block_sparse_attention(q, k, v, layout, block, o);
    y.sum().backward();
    times.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  std::sort(times.begin(), times.end());
  const double t = times[times.size() / 2];
  const double nb = double(T / block);
  const double blocks = dense ? double(H) * nb * nb : kept;  // what each path multiplies
  const double flops = 3.0 * 4.0 * blocks * double(block * block) * double(D);
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  std::printf("%s seq %lld heads %lld width %lld block %lld: density %.4f, fwd+bwd %.4f s (median of %lld), "
              "%.2f GFLOP/s, peak RSS %.1f MiB\n",
              dense ? "dense " : "sparse", (long long)T, (long long)H, (long long)D, (long long)block,
              kept / (double(H) * nb * nb), t, (long long)reps, flops / t / 1e9, double(ru.ru_maxrss) / 1024.0);
  return 0;
}
