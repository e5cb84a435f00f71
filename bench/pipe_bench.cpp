// The pipeline bubble, measured: each stage's forward and backward of a micro-batch take a
// fixed time (slept, so that 4 stages on 2 cores still run side by side as on 4 machines),
// real activations of B x T x d fp32 travel between the stages through ds::pipe::StageLink,
// and the executor runs the schedule. Bubble = 1 - m (f + b) / wall time of a batch, against
// the simulator's bubble for the same schedule (for GPipe and 1F1B the closed form
// (p - 1) / (m + p - 1); for interleaved Megatron's, smaller by the number of chunks).
//
//   build/apps/ds-launch --num_procs 4 --no_prefix build/bench/pipe_bench --micro 8
//   options: --micro M  --forward-ms F (10)  --backward-ms B (20)  --batches N (4)
//            --kind 1f1b|gpipe|interleaved  --tokens T (128)  --width D (256)
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/autograd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "ds/comm/communicator.h"
#include "ds/common/openmp_env.h"
#include "ds/pipe/executor.h"

namespace {

double arg(int argc, char** argv, const char* name, double fallback) {
  for (int i = 1; i + 1 < argc; ++i)
    if (!std::strcmp(argv[i], name)) return std::atof(argv[i + 1]);
  return fallback;
}
std::string arg_s(int argc, char** argv, const char* name, const char* fallback) {
  for (int i = 1; i + 1 < argc; ++i)
    if (!std::strcmp(argv[i], name)) return argv[i + 1];
  return fallback;
}

// Identity in value; its forward sleeps `f` ms and its backward `b` ms.
struct Timed : torch::autograd::Function<Timed> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, const at::Tensor& w, double f,
                            double b) {
    ctx->saved_data["b"] = b;
    ctx->save_for_backward({x, w});
    std::this_thread::sleep_for(std::chrono::duration<double, std::milli>(f));
    return x * w;
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list g) {
    std::this_thread::sleep_for(std::chrono::duration<double, std::milli>(ctx->saved_data["b"].toDouble()));
    const auto saved = ctx->get_saved_variables();
    return {g[0] * saved[1], (g[0] * saved[0]).sum().reshape({1}), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

int main(int argc, char** argv) {
  ds::ensure_passive_openmp(argv);
  auto world = ds::comm::init_from_env();
  const int p = world->size(), stage = world->rank();
  const int m = int(arg(argc, argv, "--micro", 8)), batches = int(arg(argc, argv, "--batches", 4));
  const double f = arg(argc, argv, "--forward-ms", 10), b = arg(argc, argv, "--backward-ms", 20);
  const int64_t tokens = int64_t(arg(argc, argv, "--tokens", 128)), width = int64_t(arg(argc, argv, "--width", 256));
  const ds::pipe::Kind kind = ds::pipe::kind_from_name(arg_s(argc, argv, "--kind", "1f1b"));
  const int v = kind == ds::pipe::Kind::kInterleaved ? 2 : 1;
  at::set_num_threads(1);

  at::Tensor w = at::ones({1}).requires_grad_(true);
  ds::pipe::StageModel model{[&](int, const at::Tensor& x) { return Timed::apply(x, w, f / v, b / v); },
                             [](const at::Tensor& out, const at::Tensor&) { return out.mean(); }};
  const at::Tensor x = at::randn({tokens, width});
  ds::pipe::Executor ex({kind, p, m, v}, world);
  std::vector<double> wall;
  for (int i = 0; i < batches + 1; ++i) {  // the first batch warms up (connections, allocations)
    world->barrier().wait();
    const auto start = std::chrono::steady_clock::now();
    ex.run(model, [&](int) { return ds::pipe::MicroBatch{x, x}; });
    world->barrier().wait();
    if (i > 0) wall.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count());
  }
  std::sort(wall.begin(), wall.end());
  const double median = wall[wall.size() / 2];
  const double bubble = 1.0 - m * (f + b) / median;
  const double sim = ds::pipe::simulate({kind, p, m, v}, f, b).bubble;
  const double act_bytes = double(tokens * width * 4);
  if (stage == 0)
    std::printf("pipe_bench: %s p=%d m=%d f=%.0f ms b=%.0f ms: batch %.1f ms (median of %d); bubble %.3f, "
                "simulated %.3f, (p-1)/(m+p-1) %.3f (%+.1f %%); activation %.0f KiB + 80 B header per message\n",
                ds::pipe::kind_name(kind), p, m, f, b, median, batches, bubble, sim, double(p - 1) / (m + p - 1),
                (bubble / sim - 1) * 100, act_bytes / 1024);
  return 0;
}
