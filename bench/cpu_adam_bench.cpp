// Parameters updated per second by ds::ops::CpuOptimizer (Adam), side by side with
// torch::optim::Adam on the same data and with a memory-bandwidth probe measured in the same run.
//
//   OPENBLAS_NUM_THREADS=1 build/bench/cpu_adam_bench                  # 1M, 10M, 100M at 1 and 2 threads
//   build/bench/cpu_adam_bench --sizes 1e6,1e7 --threads 2 --reps 9    # a quicker subset
//
// Adam moves 28 bytes per parameter in fp32 (reads param, grad, exp_avg, exp_avg_sq = 16 B;
// writes param, exp_avg, exp_avg_sq = 12 B), so a memory bandwidth of B bytes/s bounds it at
// B / 28 parameters/s. Two probes give B: a STREAM triad (a = b + s*c, counted as 12 B per
// element as STREAM does) and "adam-shape", which reads four arrays and writes three of them
// back in place, the exact access pattern of the optimizer (28 B per element). The bound is
// taken from the faster of the two. The four workloads run round-robin (one warm-up each, then
// --reps rounds) so that they share whatever else the machine is doing; figures are medians.
// After each torch step the bench sleeps 50 ms (untimed) so that libgomp's spinning workers do
// not steal a core from the next workload.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/optim/adam.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "ds/common/error.h"
#include "ds/ops/cpu_optimizer.h"

using namespace ds::ops;
using Clock = std::chrono::steady_clock;

namespace {

struct Args {
  std::vector<int64_t> sizes = {1000000, 10000000, 100000000};
  std::vector<int> threads = {1, 2};
  int reps = 0;  // 0: by size
  bool per_target = true;
};

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  size_t start = 0;
  for (;;) {
    const size_t comma = s.find(',', start);
    out.push_back(s.substr(start, comma - start));
    if (comma == std::string::npos) return out;
    start = comma + 1;
  }
}

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string k = argv[i];
    auto value = [&]() -> std::string {
      DS_CHECK(i + 1 < argc, k, " needs a value");
      return argv[++i];
    };
    if (k == "--sizes") {
      a.sizes.clear();
      for (const auto& s : split(value())) a.sizes.push_back(static_cast<int64_t>(std::stod(s)));
    } else if (k == "--threads") {
      a.threads.clear();
      for (const auto& s : split(value())) a.threads.push_back(std::stoi(s));
    } else if (k == "--reps") {
      a.reps = std::stoi(value());
    } else if (k == "--no-per-target") {
      a.per_target = false;
    } else {
      throw ds::Error(ds::str("unknown argument ", k,
                              "; usage: cpu_adam_bench [--sizes 1e6,1e7,1e8] [--threads 1,2] [--reps N] "
                              "[--no-per-target]"));
    }
  }
  return a;
}

int reps_for(const Args& a, int64_t n) {
  if (a.reps > 0) return a.reps;
  return n <= 2000000 ? 51 : n <= 20000000 ? 11 : 5;
}

// One workload of the comparison: `run` does one timed unit of work; `settle` (untimed) runs
// after it.
struct Workload {
  const char* name;
  std::function<void()> run;
  std::vector<double> seconds;
  std::function<void()> settle = nullptr;
};

// LibTorch's OpenMP workers (libgomp) keep spinning for milliseconds after a parallel region;
// measured right after torch, the next workload would find one core taken. Wait that out.
void let_openmp_sleep() { std::this_thread::sleep_for(std::chrono::milliseconds(50)); }

// Warms every workload up once, then runs them round-robin `reps` times, so that all of them
// see the same conditions (two cores are easily shared with someone's build). Returns the
// median seconds of each.
std::vector<double> interleaved_medians(std::vector<Workload>& w, int reps) {
  for (auto& x : w) {
    x.run();
    if (x.settle) x.settle();
  }
  for (int r = 0; r < reps; ++r) {
    for (auto& x : w) {
      const auto s = Clock::now();
      x.run();
      x.seconds.push_back(std::chrono::duration<double>(Clock::now() - s).count());
      if (x.settle) x.settle();
    }
  }
  std::vector<double> med;
  for (auto& x : w) {
    std::sort(x.seconds.begin(), x.seconds.end());
    med.push_back(x.seconds[x.seconds.size() / 2]);
  }
  return med;
}

// Splits [0, n) into tiles over the pool, as the optimizer does.
void for_tiles(ThreadPool& pool, int64_t n, const std::function<void(int64_t, int64_t)>& body) {
  const int64_t tiles = (n + kTileElements - 1) / kTileElements;
  pool.run(tiles, [&](int64_t t, int) { body(t * kTileElements, std::min(n, (t + 1) * kTileElements)); });
}

// The bandwidth probes' buffers and kernels.
struct Probe {
  std::vector<float> a, b, c, d;
  explicit Probe(int64_t n) : a(n, 0.0f), b(n, 1.0f), c(n, 2.0f), d(n, 0.5f) {}
  void triad(ThreadPool& pool) {  // a = b + s*c
    for_tiles(pool, static_cast<int64_t>(a.size()), [&](int64_t lo, int64_t hi) {
      float* __restrict pa = a.data();
      const float* __restrict pb = b.data();
      const float* __restrict pc = c.data();
      for (int64_t i = lo; i < hi; ++i) pa[i] = pb[i] + 0.5f * pc[i];
    });
  }
  void adam_shape(ThreadPool& pool) {  // read p, g, m, v; write p, m, v in place (values stay bounded)
    for_tiles(pool, static_cast<int64_t>(a.size()), [&](int64_t lo, int64_t hi) {
      float* __restrict p = a.data();
      const float* __restrict g = b.data();
      float* __restrict m = c.data();
      float* __restrict v = d.data();
      for (int64_t i = lo; i < hi; ++i) {
        const float gi = g[i];
        m[i] = 0.5f * m[i] + gi;
        v[i] = 0.5f * v[i] + gi;
        p[i] = 0.5f * p[i] + gi;
      }
    });
  }
};

// Our Adam on one target ("" = the best) over its own buffers.
struct OursAdam {
  CpuOptimizer opt;
  at::Tensor p, g;
  std::vector<at::Tensor> state;
  int64_t step = 0;
  OursAdam(int64_t n, int threads, const std::string& target)
      : opt([&] {
          CpuOptimizerOptions o;
          o.threads = threads;
          o.simd_target = target;
          return o;
        }()),
        p(at::randn({n})),
        g(at::randn({n})),
        state(opt.make_state(n)) {}
  void run() { opt.step(p, g, state, ++step); }
};

struct TorchAdam {
  at::Tensor p;
  std::unique_ptr<torch::optim::Adam> opt;
  explicit TorchAdam(int64_t n) : p(at::randn({n})) {
    p.mutable_grad() = at::randn({n});
    opt = std::make_unique<torch::optim::Adam>(std::vector<at::Tensor>{p}, torch::optim::AdamOptions(1e-3));
  }
  void run() { opt->step(); }
};

std::string millions(int64_t n) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%gM", n / 1e6);
  return buf;
}

}  // namespace

int main(int argc, char** argv) try {
  const Args args = parse(argc, argv);
  const char* blas = std::getenv("OPENBLAS_NUM_THREADS");
  std::printf("# cpu_adam_bench: SIMD targets available:");
  for (const auto& t : available_simd_targets()) std::printf(" %s", t.name.c_str());
  std::printf("; dispatch picks %s. OPENBLAS_NUM_THREADS=%s\n", best_simd_target().name.c_str(),
              blas ? blas : "(unset: OpenBLAS may use every core; Adam itself does not call BLAS)");
  std::printf(
      "# G params/s = 1e9 parameters updated per second (median); bound = max(probe GB/s) / 28 B\n\n");
  std::printf(
      "| params | threads | ours (G/s) | torch::optim::Adam (G/s) | speed-up | triad (GB/s) | adam-shape "
      "(GB/s) "
      "| bound (G/s) | ours / bound |\n");
  std::printf("|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
  std::fflush(stdout);
  for (int threads : args.threads) {
    at::set_num_threads(threads);  // torch's elementwise kernels; ours take the count from options
    ThreadPool pool(threads);
    for (int64_t n : args.sizes) {
      Probe probe(n);
      OursAdam ours(n, threads, "");
      TorchAdam ref(n);
      std::vector<Workload> w = {{"triad", [&] { probe.triad(pool); }, {}},
                                 {"adam-shape", [&] { probe.adam_shape(pool); }, {}},
                                 {"ours", [&] { ours.run(); }, {}},
                                 {"torch", [&] { ref.run(); }, {}, let_openmp_sleep}};
      const auto s = interleaved_medians(w, reps_for(args, n));
      const double triad_gbs = 12.0 * n / s[0] / 1e9, shape_gbs = 28.0 * n / s[1] / 1e9;
      const double ours_ps = n / s[2], torch_ps = n / s[3];
      const double bound = std::max(triad_gbs, shape_gbs) * 1e9 / 28.0;
      std::printf("| %s | %d | %.3f | %.3f | %.1fx | %.1f | %.1f | %.3f | %.0f%% |\n", millions(n).c_str(),
                  threads, ours_ps / 1e9, torch_ps / 1e9, ours_ps / torch_ps, triad_gbs, shape_gbs,
                  bound / 1e9, 100.0 * ours_ps / bound);
      std::fflush(stdout);
    }
  }
  if (args.per_target) {
    const int64_t n = 10000000;
    const int threads = *std::max_element(args.threads.begin(), args.threads.end());
    std::printf("\n# the same Adam step on each instruction set, interleaved: %s params, %d thread(s)\n\n",
                millions(n).c_str(), threads);
    std::vector<std::unique_ptr<OursAdam>> runs;
    std::vector<Workload> w;
    const auto targets = available_simd_targets();
    for (const auto& t : targets) {
      runs.push_back(std::make_unique<OursAdam>(n, threads, t.name));
      w.push_back({t.name.c_str(), [r = runs.back().get()] { r->run(); }, {}});
    }
    const auto s = interleaved_medians(w, reps_for(args, n));
    std::printf("| target | ours (G/s) |\n|---|---:|\n");
    for (size_t i = 0; i < targets.size(); ++i)
      std::printf("| %s | %.3f |\n", targets[i].name.c_str(), n / s[i] / 1e9);
  }
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "cpu_adam_bench: %s\n", e.what());
  return 1;
}
