// Block-sparse vs dense attention, forward + backward of one layer (docs/BENCHMARKS.md).
//
//   sparse_attention_bench --seq 4096 --batch 1 --heads 1 --width 64 --block 64 --window 3
//                          --reps 3 --threads 2 --layout 0 --dense 0
//
// --layout 0: bslongformer (a sliding window of --window blocks and global block 0), causal;
// --layout 1: every block at or below the diagonal, i.e. exact causal attention.
// --dense 0 runs the block kernels (ds::sparse::block_sparse_attention); --dense 1 LibTorch
// attention with the layout's token mask (ds::sparse::dense_masked_attention); --dense 2 the
// reference GPT's dense attention (matmul, causal masked_fill, softmax, matmul: what
// --layout 1 replaces). Separate processes give separate peaks.
// Prints the density, the median time of --reps fwd+bwd runs (and of the forward alone), the
// FLOP rate (model FLOPs of the kept blocks: 2 GEMMs forward, 4 backward; the fused backward's
// recomputed scores are not counted), this process's peak RSS, and at::mm's fp32 GEMM rate
// (1024³) measured in the same process.
#include <ATen/ATen.h>
#include <sys/resource.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <limits>
#include <vector>

#include "args.h"
#include "ds/sparse/attention.h"
#include "ds/sparse/layout.h"

namespace {

double seconds_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

at::Tensor gpt_dense_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  const int64_t T = q.size(2);
  at::Tensor att = at::matmul(q, k.transpose(-2, -1)) * (1.0 / std::sqrt(double(q.size(3))));
  att = at::softmax(att.masked_fill(at::ones({T, T}, at::kBool).triu(1), -std::numeric_limits<float>::infinity()), -1);
  return at::matmul(att, v);
}

double gemm_rate() {
  const at::Tensor a = at::randn({1024, 1024}), b = at::randn({1024, 1024});
  at::mm(a, b);
  std::vector<double> g;
  for (int i = 0; i < 5; ++i) {
    const auto s0 = std::chrono::steady_clock::now();
    at::mm(a, b);
    g.push_back(seconds_since(s0));
  }
  std::sort(g.begin(), g.end());
  return 2.0 * 1024 * 1024 * 1024 / g[g.size() / 2] / 1e9;
}

}  // namespace

int main(int argc, char** argv) {
  using ds::bench::arg;
  const int64_t T = arg(argc, argv, "--seq", 4096), Bn = arg(argc, argv, "--batch", 1),
                H = arg(argc, argv, "--heads", 1), D = arg(argc, argv, "--width", 64),
                block = arg(argc, argv, "--block", 64), window = arg(argc, argv, "--window", 3),
                reps = arg(argc, argv, "--reps", 3), threads = arg(argc, argv, "--threads", 2),
                exact = arg(argc, argv, "--layout", 0), dense = arg(argc, argv, "--dense", 0);
  at::set_num_threads(int(threads));  // LibTorch's default here is the physical cores it guesses
  ds::SparseAttentionConfig c;
  c.enabled = true, c.mode = ds::SparseMode::kBSLongformer, c.block = block, c.num_sliding_window_blocks = window;
  c.attention = ds::SparseDirection::kUnidirectional;
  const at::Tensor layout = exact ? ds::sparse::full_layout(H, T, block, true) : ds::sparse::make_layout(c, H, T);
  const ds::sparse::SparsePlan plan = ds::sparse::plan_block_sparse(layout, block);
  const double kept = double(layout.sum().item<int64_t>());
  torch::manual_seed(1);
  ds::sparse::AttentionOptions o;
  o.causal = true;
  std::vector<double> times, fwd;
  for (int64_t r = 0; r < reps; ++r) {
    at::Tensor q = at::randn({Bn, H, T, D}).requires_grad_(), k = at::randn({Bn, H, T, D}).requires_grad_(),
               v = at::randn({Bn, H, T, D}).requires_grad_();
    const auto start = std::chrono::steady_clock::now();
    at::Tensor y = dense == 1   ? ds::sparse::dense_masked_attention(q, k, v, layout, block, o)
                   : dense == 2 ? gpt_dense_attention(q, k, v)
                                : ds::sparse::block_sparse_attention(q, k, v, plan, o);
    fwd.push_back(seconds_since(start));
    y.sum().backward();
    times.push_back(seconds_since(start));
  }
  std::sort(times.begin(), times.end());
  std::sort(fwd.begin(), fwd.end());
  const double t = times[times.size() / 2];
  const double nb = double(layout.size(1));
  const double blocks = dense ? double(H) * nb * nb : kept;  // what each path multiplies
  const double flops = double(Bn) * 3.0 * 4.0 * blocks * double(block * block) * double(D);
  const double mm = gemm_rate();  // after the timed runs: it does not raise their peak
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  const char* name = dense == 1 ? "masked dense" : dense == 2 ? "GPT dense" : exact ? "exact blocks" : "sparse";
  std::printf("%-12s seq %lld batch %lld heads %lld width %lld block %lld: density %.4f, fwd+bwd %.4f s (fwd %.4f; "
              "median of %lld), %.2f GFLOP/s (at::mm fp32 %.1f GFLOP/s), peak RSS %.1f MiB (%s kernels)\n",
              name, (long long)T, (long long)Bn, (long long)H, (long long)D, (long long)block,
              kept / (double(H) * nb * nb), t, fwd[fwd.size() / 2], (long long)reps, flops / t / 1e9, mm,
              double(ru.ru_maxrss) / 1024.0, ds::sparse::kernel_target());
  return 0;
}
