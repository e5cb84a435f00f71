// One block of the reference GPT (LayerNorms, attention, MLP), forward + backward on one
// sequence of --seq tokens: time and this process's peak RSS, for the longest-sequence
// measurement (bench/longest_sequence.sh, docs/BENCHMARKS.md).
//
//   gpt_layer_bench --seq 16384 --d-model 256 --heads 4 --attention exact --threads 2
//
// --attention dense: LibTorch's T x T scores (GptConfig::dense_attention); exact: the block
// kernels over every causal block (the default); sparse: a bslongformer layout (a sliding
// window of --window blocks of --block and global block 0), as in the sparse_attention
// section.
#include <ATen/ATen.h>
#include <sys/resource.h>
#include <torch/torch.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>

#include "args.h"
#include "ds/models/gpt.h"

int main(int argc, char** argv) {
  using ds::bench::arg;
  const int64_t T = arg(argc, argv, "--seq", 4096), d = arg(argc, argv, "--d-model", 256),
                heads = arg(argc, argv, "--heads", 4), block = arg(argc, argv, "--block", 64),
                window = arg(argc, argv, "--window", 3), threads = arg(argc, argv, "--threads", 2);
  std::string path = "exact";
  for (int i = 1; i + 1 < argc; ++i)
    if (!std::strcmp(argv[i], "--attention")) path = argv[i + 1];
  at::set_num_threads(int(threads));
  ds::GptConfig c;
  c.n_layer = 1, c.d_model = d, c.n_head = heads, c.seq_len = T;
  c.dense_attention = path == "dense";
  if (path == "sparse") {
    c.sparse.enabled = true, c.sparse.mode = ds::SparseMode::kBSLongformer, c.sparse.block = block;
    c.sparse.num_sliding_window_blocks = window, c.sparse.attention = ds::SparseDirection::kUnidirectional;
  }
  c.validate();
  torch::manual_seed(1);
  ds::GptBlock layer(c, 0);
  const at::Tensor x = at::randn({1, T, d}).requires_grad_();
  const auto start = std::chrono::steady_clock::now();
  layer->forward(x).sum().backward();
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  std::printf("%-6s seq %lld d_model %lld heads %lld: fwd+bwd %.3f s, peak RSS %.1f MiB (%s)\n", path.c_str(),
              (long long)T, (long long)d, (long long)heads, seconds, double(ru.ru_maxrss) / 1024.0,
              c.describe_attention().c_str());
  return 0;
}
