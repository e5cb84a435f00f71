// Algorithmic bandwidth of all-reduce, reduce-scatter and all-gather, for our Gloo ring
// backend, raw c10d Gloo all-reduce and MPI, in the same run on the same ranks.
//
//   mpirun --allow-run-as-root -np 2 build/bench/comm_bench            # all three
//   ds-launch --num_procs 2 build/bench/comm_bench                     # Gloo only
//
// algbw = message bytes / time (nccl-tests' convention); busbw scales it by what each rank
// must move: 2(N-1)/N for all-reduce, (N-1)/N for reduce-scatter and all-gather.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>

#include "ds/comm/communicator.h"
#include "ds/common/error.h"

using namespace ds;
using Clock = std::chrono::steady_clock;

namespace {

// Median seconds of `reps` timed runs after one warm-up, agreed across ranks (max of ranks).
double time_op(comm::Communicator& world, int reps, const std::function<void()>& op) {
  op();
  std::vector<double> t;
  for (int i = 0; i < reps; ++i) {
    world.barrier().wait();
    auto s = Clock::now();
    op();
    t.push_back(std::chrono::duration<double>(Clock::now() - s).count());
  }
  std::sort(t.begin(), t.end());
  at::Tensor med = at::full({1}, t[t.size() / 2], at::kDouble);
  world.all_reduce(med, comm::ReduceOp::Max).wait();
  return med.item<double>();
}

void report(comm::Communicator& world, const char* impl, const char* op, int64_t bytes, double secs, double factor) {
  if (world.rank() != 0) return;
  double algbw = bytes / secs / 1e9;
  std::printf("%-12s %-15s %8.0f MiB %10.2f ms %9.3f GB/s %9.3f GB/s\n", impl, op, bytes / 1048576.0, secs * 1e3, algbw,
              algbw * factor);
  std::fflush(stdout);
}

void bench_ours(comm::Communicator& c, comm::Communicator& timer, const char* impl, int64_t bytes, int reps) {
  const int n = c.size();
  int64_t numel = bytes / 4;
  at::Tensor buf = at::ones({numel});
  at::Tensor shard = at::empty({comm::chunk_of(numel, n, c.rank()).length});
  double ar = time_op(timer, reps, [&] { c.all_reduce(buf).wait(); });
  double rs = time_op(timer, reps, [&] { c.reduce_scatter(shard, buf).wait(); });
  double ag = time_op(timer, reps, [&] { c.all_gather(buf, shard).wait(); });
  report(timer, impl, "all_reduce", bytes, ar, 2.0 * (n - 1) / n);
  report(timer, impl, "reduce_scatter", bytes, rs, double(n - 1) / n);
  report(timer, impl, "all_gather", bytes, ag, double(n - 1) / n);
  if (timer.rank() == 0) std::printf("%-12s reduce_scatter / all_reduce time: %.2f\n", impl, rs / ar);
}

void bench_raw_c10d(c10d::ProcessGroupGloo& pg, comm::Communicator& timer, int64_t bytes, int reps) {
  std::vector<at::Tensor> v{at::ones({bytes / 4})};
  double ar = time_op(timer, reps, [&] { pg.allreduce(v)->wait(); });
  report(timer, "c10d-gloo", "all_reduce", bytes, ar, 2.0 * (pg.getSize() - 1) / pg.getSize());
}

int env_int(const char* name, int fallback) {
  const char* v = std::getenv(name);
  return v ? std::atoi(v) : fallback;
}

}  // namespace

int main() {
  try {
    at::set_num_threads(1);
    std::shared_ptr<comm::Communicator> mpi;
    int rank, world, port;
    std::string addr = "127.0.0.1";
    if (comm::default_backend() == "mpi") {
      mpi = comm::make_mpi({});
      rank = mpi->rank(), world = mpi->size();
      at::Tensor p = at::zeros({1}, at::kInt);
      if (rank == 0) p.fill_(20000 + (::getpid() % 20000));
      mpi->broadcast(p, 0).wait();  // the Gloo rendezvous port, chosen by rank 0
      port = p.item<int>();
    } else {
      rank = env_int("RANK", 0), world = env_int("WORLD_SIZE", 1), port = env_int("MASTER_PORT", 29500);
      if (const char* a = std::getenv("MASTER_ADDR")) addr = a;
    }
    comm::GlooOptions go;
    go.rank = rank, go.world_size = world, go.master_port = port, go.master_addr = addr;
    auto gloo = comm::make_gloo(go);
    // Raw c10d Gloo on its own store, port + 1.
    c10d::TCPStoreOptions so;
    so.port = static_cast<uint16_t>(port + 1), so.isServer = rank == 0, so.numWorkers = world;
    auto store = c10::make_intrusive<c10d::TCPStore>(addr, so);
    auto opts = c10d::ProcessGroupGloo::Options::create();
    opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(addr));
    c10d::ProcessGroupGloo raw(store, rank, world, opts);

    int reps = env_int("DS_BENCH_REPS", 5);
    if (rank == 0)
      std::printf("comm_bench: %d ranks, %d reps (median), 1 intra-op thread per rank\n%-12s %-15s %12s %13s %14s %14s\n",
                  world, reps, "impl", "op", "size", "time", "algbw", "busbw");
    for (int64_t mib : {1, 16, 128}) {
      int64_t bytes = mib << 20;
      bench_ours(*gloo, *gloo, "ds-gloo", bytes, reps);
      bench_raw_c10d(raw, *gloo, bytes, reps);
      if (mpi) bench_ours(*mpi, *gloo, "ds-mpi", bytes, reps);
    }
    gloo->barrier().wait();
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "comm_bench: error: %s\n", e.what());
    return 1;
  }
}
