// Engine overhead: tokens/s of the same GPT and batch trained (a) by a plain LibTorch loop
// with torch::optim::AdamW and (b) by ds::Engine at ZeRO stage 0 on one rank, interleaved
// in one process so that both see the same machine state; plus model FLOPs utilisation
// against an fp32 GEMM measured in the same run.
//
//   OPENBLAS_NUM_THREADS=2 build/bench/engine_bench [--layers 4 --width 256 --context 128 --batch 16]
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/optim/adamw.h>
#include <torch/utils.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "args.h"
#include "ds/comm/communicator.h"
#include "ds/common/error.h"
#include "ds/common/openmp_env.h"
#include "ds/config/config.h"
#include "ds/models/gpt.h"
#include "ds/runtime/engine.h"

using Clock = std::chrono::steady_clock;

namespace {

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// fp32 GEMM throughput (GFLOP/s) at n x n x n, median of 5.
double gemm_gflops(int64_t n) {
  at::Tensor a = at::randn({n, n}), b = at::randn({n, n});
  at::mm(a, b);
  std::vector<double> t;
  for (int i = 0; i < 5; ++i) {
    auto s = Clock::now();
    at::mm(a, b);
    t.push_back(seconds_since(s));
  }
  return 2.0 * n * n * n / median(t) / 1e9;
}

using ds::bench::arg;

}  // namespace

int main(int argc, char** argv) {
  ds::ensure_passive_openmp(argv);
  ds::GptConfig mc;
  mc.n_layer = arg(argc, argv, "--layers", 4);
  mc.d_model = arg(argc, argv, "--width", 256);
  mc.n_head = arg(argc, argv, "--heads", 4);
  mc.seq_len = arg(argc, argv, "--context", 128);
  const int64_t batch = arg(argc, argv, "--batch", 16), steps = arg(argc, argv, "--steps", 20);
  at::set_num_threads(static_cast<int>(arg(argc, argv, "--threads", 2)));

  torch::manual_seed(1);
  at::Tensor tokens = at::randint(0, mc.vocab_size, {batch, mc.seq_len}, at::kLong);
  at::Tensor targets = at::randint(0, mc.vocab_size, {batch, mc.seq_len}, at::kLong);

  torch::manual_seed(0);
  ds::Gpt plain_model(mc);
  torch::optim::AdamW plain_opt(plain_model->parameters(), torch::optim::AdamWOptions(1e-3).weight_decay(0.01));
  auto plain_step = [&] {
    plain_opt.zero_grad();
    plain_model->loss(tokens, targets).backward();
    plain_opt.step();
  };

  torch::manual_seed(0);
  ds::Gpt engine_model(mc);
  ds::Config config = ds::Config::parse(ds::str(R"({"train_batch_size": )", batch,
      R"(, "optimizer": {"type": "AdamW", "params": {"lr": 0.001, "weight_decay": 0.01}}})"));
  config.resolve(1);
  ds::Engine engine(engine_model.ptr(), config, ds::comm::init_from_env());
  auto engine_step = [&] {
    engine.backward(engine.forward([&] { return engine_model->loss(tokens, targets); }));
    engine.step();
  };

  for (int i = 0; i < 3; ++i) plain_step(), engine_step();  // warm-up
  std::vector<double> plain_t, engine_t;
  for (int64_t i = 0; i < steps; ++i) {  // interleaved: both see the same noise
    auto s = Clock::now();
    plain_step();
    plain_t.push_back(seconds_since(s));
    s = Clock::now();
    engine_step();
    engine_t.push_back(seconds_since(s));
  }
  const double tokens_per_step = double(batch * mc.seq_len);
  const double plain_tps = tokens_per_step / median(plain_t), engine_tps = tokens_per_step / median(engine_t);
  const double gemm = gemm_gflops(1024);
  const double model_gflops = engine_tps * mc.flops_per_token(mc.seq_len) / 1e9;
  std::printf("engine_bench: %s, batch %lld, %d threads, %lld steps (median)\n", mc.describe().c_str(), (long long)batch,
              at::get_num_threads(), (long long)steps);
  std::printf("  plain LibTorch loop (torch::optim::AdamW): %8.0f tokens/s  %7.1f ms/step\n", plain_tps, median(plain_t) * 1e3);
  std::printf("  ds::Engine stage 0 (1 rank):               %8.0f tokens/s  %7.1f ms/step\n", engine_tps, median(engine_t) * 1e3);
  std::printf("  engine overhead: %+.1f %%\n", (plain_tps / engine_tps - 1.0) * 100.0);
  std::printf("  model FLOPs: %.1f GFLOP/s = %.0f %% of the fp32 GEMM measured now (%.1f GFLOP/s at 1024^3)\n",
              model_gflops, 100.0 * model_gflops / gemm, gemm);
  return 0;
}
