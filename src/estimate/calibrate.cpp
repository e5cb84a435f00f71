// ds-estimate --calibrate: the rates of this machine, measured in well under a minute (see
// estimate.h). Each measurement uses the threads one rank of the layout gets (cores / ranks
// per node) and is stored as the node's rate.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <dlfcn.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <torch/torch.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <memory>
#include <thread>
#include <tuple>
#include <utility>

#include "ds/comm/communicator.h"
#include "ds/compress/onebit.h"
#include "ds/compress/quantize.h"
#include "ds/common/error.h"
#include "ds/estimate/estimate.h"
#include "ds/models/gpt.h"
#include "ds/profiling/flops_profiler.h"
#include "ds/runtime/allocator.h"

namespace ds::estimate {

namespace {

using Clock = std::chrono::steady_clock;

double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// LibTorch's intra-op threads and OpenBLAS's own pool (which at::set_num_threads leaves alone;
// under ds-launch OMP_NUM_THREADS sets both).
void set_threads(int n) {
  at::set_num_threads(n);
  using SetThreads = void (*)(int);
  if (auto f = reinterpret_cast<SetThreads>(::dlsym(RTLD_DEFAULT, "openblas_set_num_threads"))) f(n);
}

int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  int port = 29500;
  if (fd >= 0 && ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0 &&
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0)
    port = ntohs(a.sin_port);
  if (fd >= 0) ::close(fd);
  return port;
}

// Two local processes all-reduce 64 MiB of fp32 a few times: the ring's bus bandwidth; then
// one float many times: the latency of a collective (per its 2 (n - 1) = 2 steps).
std::pair<double, double> loopback_rates() {
  const int port = free_port();
  int pipes[2];
  if (::pipe(pipes) != 0) throw Error("calibrate: cannot create a pipe");
  pid_t children[2];
  for (int rank = 0; rank < 2; ++rank) {
    children[rank] = ::fork();
    if (children[rank] == 0) {
      double rate[2] = {0, 0};
      try {
        at::set_num_threads(1);
        comm::GlooOptions o;
        o.master_port = port, o.rank = rank, o.world_size = 2, o.timeout = std::chrono::seconds(60);
        auto c = comm::make_gloo(o);
        at::Tensor t = at::ones({16 << 20});
        c->all_reduce(t).wait();  // connect and warm up
        const auto start = Clock::now();
        for (int i = 0; i < 4; ++i) c->all_reduce(t).wait();
        rate[0] = 4.0 * double(t.nbytes()) / since(start);  // 2 (n-1)/n = 1 for two ranks
        at::Tensor one = at::ones({1});
        for (int i = 0; i < 10; ++i) c->all_reduce(one).wait();
        const auto small = Clock::now();
        for (int i = 0; i < 200; ++i) c->all_reduce(one).wait();
        rate[1] = since(small) / 200 / 2;
      } catch (const std::exception&) {
        rate[0] = rate[1] = 0;
      }
      if (rank == 0 && ::write(pipes[1], rate, sizeof rate) != sizeof rate) _exit(1);
      _exit(0);
    }
  }
  ::close(pipes[1]);
  double rate[2] = {0, 0};
  if (::read(pipes[0], rate, sizeof rate) != sizeof rate) rate[0] = 0;
  ::close(pipes[0]);
  for (pid_t p : children) ::waitpid(p, nullptr, 0);
  if (rate[0] <= 0 || rate[1] <= 0) throw Error("calibrate: the loopback all-reduce between two local processes failed");
  return {rate[0], rate[1]};
}

// A tensor group of `size` ranks in which this process is rank 0 and no collective moves
// anything (a gather repeats this rank's chunk): one tensor slice's compute, LayerNorms and all,
// without its communication, which the estimate prices at the measured link rates instead.
class SliceOnlyGroup final : public comm::Communicator {
 public:
  explicit SliceOnlyGroup(int size) : Communicator(std::make_shared<comm::CommsLogger>()), size_(size) {}
  int rank() const override { return 0; }
  int size() const override { return size_; }
  std::string backend() const override { return "none (calibration)"; }
  comm::Work all_reduce(at::Tensor&, comm::ReduceOp) override { return {}; }
  comm::Work reduce_scatter(at::Tensor& output, const at::Tensor& input, comm::ReduceOp) override {
    output.view({-1}).copy_(input.reshape({-1}).narrow(0, 0, output.numel()));
    return {};
  }
  comm::Work all_gather(at::Tensor& output, const at::Tensor& input) override {
    at::Tensor out = output.view({-1});
    for (int64_t at = 0; at < out.numel() && input.numel() > 0; at += input.numel()) {
      const int64_t n = std::min(input.numel(), out.numel() - at);
      out.narrow(0, at, n).copy_(input.reshape({-1}).narrow(0, 0, n));
    }
    return {};
  }
  comm::Work broadcast(at::Tensor&, int) override { return {}; }
  comm::Work all_to_all(at::Tensor&, const at::Tensor&, const std::vector<int64_t>&,
                        const std::vector<int64_t>&) override {
    throw Error("calibrate: the tensor slice's model called all_to_all");
  }
  comm::Work barrier() override { return {}; }
  comm::Work send(const at::Tensor&, int, int) override { throw Error("calibrate: the tensor slice's model sent"); }
  comm::Work recv(at::Tensor&, int, int) override { throw Error("calibrate: the tensor slice's model received"); }
  std::shared_ptr<comm::Communicator> new_group(const std::vector<int>&, const std::string&) override {
    throw Error("calibrate: the tensor slice's model made a group");
  }

 private:
  int size_;
};

// One training forward and backward of the GPT's block and head at this width, on `tokens`
// tokens: the model's FLOP rate with the given threads. With `tensor` > 1: the rate of one
// tensor-parallel slice (1/tensor of the FLOPs, the whole LayerNorm and residual work).
double model_rate(const ModelShape& shape, int64_t context, int64_t micro_batch, int tensor = 1) {
  GptConfig c;
  c.n_layer = 1, c.d_model = shape.d_model, c.n_head = shape.n_head, c.seq_len = context;
  c.vocab_size = std::min<int64_t>(shape.vocab_size, 8192);  // the head's rate does not need the whole vocabulary
  c.vocab_size -= c.vocab_size % std::max(1, tensor);         // a slice of it per tensor rank
  // The whole model when a pass takes about a second at 20 GFLOP/s (a small model's fixed
  // costs count), else its blocks' rate from one block on fewer sequences.
  const double budget = 2e10, block = 24.0 * double(shape.d_model) * double(shape.d_model) * double(context);
  c.n_layer = std::max<int64_t>(1, std::min<int64_t>(shape.n_layer, int64_t(budget / (block * double(micro_batch)))));
  const double per_token = c.flops_per_token(context);
  const int64_t sequences = std::max<int64_t>(1, std::min<int64_t>(micro_batch, int64_t(budget / (per_token * context))));
  torch::manual_seed(1);
  Gpt model(c, tensor > 1 ? std::make_shared<SliceOnlyGroup>(tensor) : nullptr);
  const at::Tensor tokens = at::randint(c.vocab_size, {sequences, context}, at::kLong);
  auto pass = [&] {
    model->zero_grad();
    model->loss(tokens, tokens).backward();
  };
  pass(), pass();  // warm-up: the allocator's cache and autograd's threads
  double fastest = 1e30;
  const auto start = Clock::now();
  for (int i = 0; i < 8 && (i < 3 || since(start) < 3.0); ++i) {
    const auto t = Clock::now();
    pass();
    fastest = std::min(fastest, since(t));
  }
  return per_token / double(std::max(1, tensor)) * double(sequences * context) / fastest;
}

double streaming_copy_rate() {
  at::Tensor a = at::ones({32 << 20}), b = at::empty_like(a);  // 128 MiB each
  b.copy_(a);
  const auto start = Clock::now();
  for (int i = 0; i < 5; ++i) b.copy_(a);
  return 5.0 * 2.0 * double(a.nbytes()) / since(start);  // read and write
}

// The compressions' loops on this thread: the 1-bit all-reduce on a world of one (its passes
// over the values are the same as on n ranks: each rank serves 1/n of n ranks' chunks), and
// ZeRO++'s int8 quantize, dequantize and dequantize-accumulate. The fastest of a few runs of
// 4M values.
struct CompressionRates {
  double onebit, quantize, dequantize, accumulate;
};
CompressionRates compression_rates() {
  constexpr int64_t kValues = 4 << 20;
  auto fastest = [](const std::function<void()>& f) {
    double best = 1e30;
    for (int i = 0; i < 4; ++i) {
      const auto start = Clock::now();
      f();
      if (i > 0) best = std::min(best, since(start));  // the first runs cold
    }
    return double(kValues) / best;
  };
  at::Tensor x = at::randn({kValues});
  compress::OneBitAllReduce onebit(kValues, comm::make_gloo(comm::GlooOptions{}));
  const double onebit_rate = fastest([&] { onebit.all_reduce(x); });
  at::Tensor packed = at::empty({compress::Int8Blocks{kValues, compress::kZeroPlusPlusGroup}.bytes()}, at::kByte);
  const double quantize = fastest([&] { compress::quantize_int8(x, compress::kZeroPlusPlusGroup, packed); });
  const double dequantize = fastest([&] { compress::dequantize_int8(packed, compress::kZeroPlusPlusGroup, x); });
  const double accumulate =
      fastest([&] { compress::dequantize_int8(packed, compress::kZeroPlusPlusGroup, x, /*accumulate=*/true, 0.5f); });
  return {onebit_rate, quantize, dequantize, accumulate};
}

// O_DIRECT write then read of 256 MiB in 1 MiB blocks under `dir`.
std::pair<double, double> disk_rates(const std::string& dir) {
  const std::string path = dir + "/ds-estimate-calibrate.tmp";
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_DIRECT, 0600);
  if (fd < 0) throw Error(ds::str("calibrate: cannot open ", path, " with O_DIRECT: ", std::strerror(errno)));
  constexpr size_t kBlock = 1 << 20, kBlocks = 256;
  void* raw = nullptr;
  if (::posix_memalign(&raw, 4096, kBlock) != 0) {
    ::close(fd);
    throw Error("calibrate: out of memory");
  }
  std::unique_ptr<void, decltype(&std::free)> buf(raw, &std::free);
  std::memset(raw, 1, kBlock);
  auto start = Clock::now();
  bool ok = true;
  for (size_t i = 0; i < kBlocks && ok; ++i) ok = ::pwrite(fd, raw, kBlock, off_t(i * kBlock)) == ssize_t(kBlock);
  ok = ok && ::fdatasync(fd) == 0;
  const double write = double(kBlock * kBlocks) / since(start);
  start = Clock::now();
  for (size_t i = 0; i < kBlocks && ok; ++i) ok = ::pread(fd, raw, kBlock, off_t(i * kBlock)) == ssize_t(kBlock);
  const double read = double(kBlock * kBlocks) / since(start);
  ::close(fd);
  ::unlink(path.c_str());
  if (!ok) throw Error(ds::str("calibrate: writing or reading ", path, " failed (full disk?): ", std::strerror(errno)));
  return {read, write};
}

// The peak RSS of ds-train training a tiny model for one step: LibTorch, BLAS, the allocator
// and the comm, with almost no model.
int64_t runtime_bytes(const std::string& bin_dir, int ranks) {
  const std::string ds_train = bin_dir + "/ds-train";
  std::string cmd = ds_train + " --steps 1 --n-layer 1 --n-head 1 --d-model 8 --eval-interval 0 --eval-examples 1 --plot '' 2>&1";
  if (ranks > 1)  // the comm's buffers and threads too
    cmd = bin_dir + "/ds-launch --num_procs " + std::to_string(ranks) + " --no_prefix " + cmd;
  FILE* p = ::popen(cmd.c_str(), "r");
  if (!p) throw Error(ds::str("calibrate: cannot run ", ds_train));
  std::string out;
  char buf[512];
  while (std::fgets(buf, sizeof buf, p)) out += buf;
  const int status = ::pclose(p);
  const size_t at = out.find("peak RSS ");
  if (status != 0 || at == std::string::npos)
    throw Error(ds::str("calibrate: ", ds_train, " did not report its peak RSS (exit status ", status, ")"));
  double value = 0;
  char unit[8] = {};
  std::sscanf(out.c_str() + at + 9, "%lf %7s", &value, unit);
  const std::string u = unit;
  const double scale = u == "GiB" ? 1024.0 * 1024 * 1024 : u == "MiB" ? 1024.0 * 1024 : u == "KiB" ? 1024.0 : 1.0;
  return int64_t(value * scale);
}

int64_t ram_bytes() {
  std::ifstream in("/proc/meminfo");
  std::string key;
  int64_t kib = 0;
  while (in >> key >> kib) {
    if (key == "MemTotal:") return kib * 1024;
    in.ignore(256, '\n');
  }
  return Rates{}.node_memory_bytes;
}

}  // namespace

Rates calibrate(const ModelShape& shape, const Layout& layout, int64_t micro_batch, const std::string& disk_dir,
                const std::string& bin_dir, int tensor) {
  Rates r;
  r.source = "measured here";
  // First: forks before this process starts its thread pools.
  std::tie(r.loopback_bytes_per_s, r.latency_s) = loopback_rates();
  // The node's rates. The model's: one rank with the threads a rank of this layout gets,
  // times the ranks that run at once (ranks of one thread each use the cores a little better
  // than one rank with every thread: measured 7% on 2 cores).
  r.cores = int(std::max(1u, std::thread::hardware_concurrency()));
  const int per_rank = std::max(1, r.cores / std::max(1, layout.ranks_per_node));
  const int at_once = std::min(layout.ranks_per_node, r.cores);
  install_caching_allocator();  // as the engine does: the model's rate depends on it
  set_threads(r.cores);
  r.gemm_flops = profiling::measure_gemm_flops(at::kFloat, 1024, 0.3);
  r.memory_bytes_per_s = streaming_copy_rate();
  set_threads(per_rank);
  const double whole = model_rate(shape, layout.context, micro_batch);
  r.model_efficiency = whole * at_once / r.gemm_flops;
  if (tensor > 1) {
    if (shape.n_head % tensor != 0 || shape.vocab_size % tensor != 0)
      throw ConfigError(ds::str("tensor_parallel.autotp_size ", tensor, " does not divide the heads (", shape.n_head,
                                ") and the vocabulary (", shape.vocab_size, "): use a size that divides both"));
    r.tensor_size = tensor;
    r.tensor_efficiency = model_rate(shape, layout.context, micro_batch, tensor) / whole;
  }
  set_threads(1);
  const CompressionRates c = compression_rates();
  r.onebit_values_per_s = c.onebit, r.quantize_values_per_s = c.quantize;
  r.dequantize_values_per_s = c.dequantize, r.accumulate_values_per_s = c.accumulate;
  set_threads(r.cores);
  if (!disk_dir.empty()) std::tie(r.disk_read_bytes_per_s, r.disk_write_bytes_per_s) = disk_rates(disk_dir);
  if (!bin_dir.empty()) r.runtime_bytes = runtime_bytes(bin_dir, std::min(layout.ranks_per_node, 2));
  r.node_memory_bytes = ram_bytes();
  return r;
}

}  // namespace ds::estimate
