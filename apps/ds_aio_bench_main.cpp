// ds-aio-bench: measures sequential O_DIRECT write and read throughput of a directory through
// ds_aio at several block sizes, queue depths and thread counts, prints a table, and
// recommends an `aio` section for ds_config.json (what DeepSpeed's ds_nvme_tune does).
//
//   ds-aio-bench /nvme/zero                     # 1 GiB file, 4 x 5 x 2 configurations
//   ds-aio-bench /nvme/zero --size 4G --block-sizes 1M,4M --queue-depths 8,32 --threads 1
//
// The file (PATH/ds_aio_bench.<pid>.dat) is deleted at exit, also after an error or Ctrl-C.
// Exit codes: 0 done, 1 error (one line on stderr), 2 usage, 130 interrupted.
#include <sys/utsname.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <cctype>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <string>
#include <thread>
#include <vector>

#include "ds/aio/buffer.h"
#include "ds/aio/file.h"
#include "ds/aio/handle.h"
#include "ds/common/error.h"
#include "ds/common/strings.h"

namespace {

constexpr int kExitError = 1;
constexpr int kExitUsage = 2;
constexpr int kExitInterrupted = 130;

std::atomic<bool> g_interrupted{false};
extern "C" void on_signal(int) { g_interrupted = true; }

struct Interrupted {};

struct BenchArgs {
  std::string dir;
  uint64_t size = uint64_t{1} << 30;
  std::vector<uint64_t> block_sizes{128 << 10, 256 << 10, 1 << 20, 4 << 20};
  std::vector<unsigned> queue_depths{1, 4, 8, 16, 32};
  std::vector<unsigned> threads{1, 2};
  std::string backend = "auto";
  bool single_submit = false;
  bool sequential = false;  // overlap_events = false
  int repeat = 1;
  std::string objective = "sum";
  bool verify = false;
};

// "128K", "1M", "1G", "1GiB", "4096" -> bytes (binary units).
uint64_t parse_size(const std::string& text) {
  size_t used = 0;
  unsigned long long value = 0;
  try {
    if (text.empty() || !std::isdigit(static_cast<unsigned char>(text[0]))) throw std::invalid_argument(text);
    value = std::stoull(text, &used);
  } catch (const std::exception&) {
    throw ds::ConfigError(ds::str("expected a size like 4096, 128K, 1M or 1G, got \"", text, "\""));
  }
  std::string unit = text.substr(used);
  if (unit.size() == 3 && unit.compare(1, 2, "iB") == 0) unit.resize(1);  // "MiB"
  if (unit.size() == 2 && unit[1] == 'B') unit.resize(1);                 // "MB", binary too
  int shift = 0;
  if (unit == "K" || unit == "k")
    shift = 10;
  else if (unit == "M" || unit == "m")
    shift = 20;
  else if (unit == "G" || unit == "g")
    shift = 30;
  else if (unit == "T" || unit == "t")
    shift = 40;
  else if (!unit.empty())
    throw ds::ConfigError(ds::str("unknown size unit in \"", text, "\" (use K, M, G or T)"));
  if (value > (UINT64_MAX >> shift)) throw ds::ConfigError(ds::str("size \"", text, "\" is too large"));
  return static_cast<uint64_t>(value) << shift;
}

std::string size_label(uint64_t bytes) {
  if (bytes % (1 << 20) == 0) return ds::str(bytes >> 20, "M");
  if (bytes % (1 << 10) == 0) return ds::str(bytes >> 10, "K");
  return std::to_string(bytes);
}

// Position-dependent contents, so that a read that lands in the wrong place is detected.
uint64_t pattern_word(uint64_t index) { return (index + 1) * 0x9E3779B97F4A7C15ull; }

void fill_pattern(ds::aio::AlignedBuffer& buf) {
  auto* w = reinterpret_cast<uint64_t*>(buf.data());
  for (uint64_t i = 0; i < buf.size() / 8; ++i) w[i] = pattern_word(i);
}

void check_pattern(const ds::aio::AlignedBuffer& buf) {
  const auto* w = reinterpret_cast<const uint64_t*>(buf.data());
  for (uint64_t i = 0; i < buf.size() / 8; ++i) {
    if (w[i] != pattern_word(i))
      throw ds::Error(ds::str("verification failed: wrong data at byte offset ", i * 8));
  }
}

// Removes the benchmark file when the program leaves main's scope, however it leaves.
struct RemoveFile {
  std::string path;
  ~RemoveFile() {
    if (!path.empty()) ::unlink(path.c_str());
  }
};

struct Result {
  uint64_t block_size;
  unsigned queue_depth;
  unsigned threads;
  double write_gbs;
  double read_gbs;
};

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

template <typename Fn>
double timed_gbs(uint64_t bytes, Fn fn) {
  const auto start = std::chrono::steady_clock::now();
  fn();
  const std::chrono::duration<double> seconds = std::chrono::steady_clock::now() - start;
  return static_cast<double>(bytes) / seconds.count() / 1e9;
}

Result measure(const BenchArgs& args, ds::aio::AioOptions options, ds::aio::File& file,
               ds::aio::AlignedBuffer& buffer) {
  ds::aio::AioHandle aio(options);
  std::vector<double> writes, reads;
  for (int r = 0; r < args.repeat; ++r) {
    if (g_interrupted) throw Interrupted{};
    writes.push_back(timed_gbs(args.size, [&] { aio.sync_pwrite(file, buffer.data(), args.size, 0); }));
    if (g_interrupted) throw Interrupted{};
    reads.push_back(timed_gbs(args.size, [&] { aio.sync_pread(file, buffer.data(), args.size, 0); }));
    if (args.verify) check_pattern(buffer);
  }
  return Result{options.block_size, options.queue_depth, options.intra_op_parallelism, median(writes),
                median(reads)};
}

std::string first_line_of(const char* path) {
  std::ifstream in(path);
  std::string line;
  std::getline(in, line);
  return line;
}

void print_header(const BenchArgs& args, const ds::aio::SwapPathInfo& info, const ds::aio::AioHandle& probe,
                  bool locked) {
  utsname u{};
  ::uname(&u);
  std::printf("ds-aio-bench: %s (%s, %s free), file %s, O_DIRECT, alignment %zu\n", args.dir.c_str(),
              info.filesystem.c_str(), ds::format_bytes(static_cast<double>(info.free_bytes)).c_str(),
              ds::format_bytes(static_cast<double>(args.size)).c_str(), info.alignment);
  std::printf("backend %s; single_submit %s, overlap_events %s; buffer page-locked: %s; repeat %d (median)\n",
              probe.backend_note().c_str(), args.single_submit ? "true" : "false",
              args.sequential ? "false" : "true", locked ? "yes" : "no", args.repeat);
  std::printf("machine: %s %s, %u CPUs, load average %s\n\n", u.sysname, u.release,
              std::thread::hardware_concurrency(), first_line_of("/proc/loadavg").c_str());
  std::printf("| block | queue_depth | threads | write GB/s | read GB/s |\n");
  std::printf("|------:|------------:|--------:|-----------:|----------:|\n");
  std::fflush(stdout);
}

void print_recommendation(const BenchArgs& args, const std::vector<Result>& results) {
  const auto by = [](auto key) {
    return [key](const Result& a, const Result& b) { return key(a) < key(b); };
  };
  const auto read = [](const Result& r) { return r.read_gbs; };
  const auto write = [](const Result& r) { return r.write_gbs; };
  const auto sum = [](const Result& r) { return r.read_gbs + r.write_gbs; };
  const Result& best_read = *std::max_element(results.begin(), results.end(), by(read));
  const Result& best_write = *std::max_element(results.begin(), results.end(), by(write));
  const Result& best_sum = *std::max_element(results.begin(), results.end(), by(sum));
  const auto show = [](const char* what, const Result& r) {
    std::printf("%-22s block %s, queue_depth %u, threads %u: write %.2f GB/s, read %.2f GB/s\n", what,
                size_label(r.block_size).c_str(), r.queue_depth, r.threads, r.write_gbs, r.read_gbs);
  };
  std::printf("\n");
  show("fastest read:", best_read);
  show("fastest write:", best_write);
  show("best read + write:", best_sum);
  const Result& pick = args.objective == "read" ? best_read : best_sum;
  std::printf("\nrecommended (objective: %s) — put this in ds_config.json:\n",
              args.objective == "read" ? "fastest read" : "highest read + write, as ds_nvme_tune");
  std::printf(
      "{\n  \"aio\": {\n    \"block_size\": %llu,\n    \"queue_depth\": %u,\n    \"intra_op_parallelism\": "
      "%u,\n"
      "    \"single_submit\": %s,\n    \"overlap_events\": %s\n  }\n}\n",
      static_cast<unsigned long long>(pick.block_size), pick.queue_depth, pick.threads,
      args.single_submit ? "true" : "false", args.sequential ? "false" : "true");
}

int run(const BenchArgs& args) {
  for (uint64_t b : args.block_sizes) {
    if (b == 0 || b % 4096 != 0)
      throw ds::ConfigError(ds::str("--block-sizes: ", b, " is not a multiple of 4096"));
  }
  if (args.size == 0 || args.size % 4096 != 0) {
    throw ds::ConfigError(ds::str("--size: ", args.size, " is not a positive multiple of 4096"));
  }
  // A block larger than the file is one short request: it measures nothing a recommendation
  // could use.
  for (uint64_t b : args.block_sizes)
    if (b > args.size)
      throw ds::ConfigError(ds::str("--block-sizes: ", size_label(b), " is larger than the file (--size ",
                                    size_label(args.size), "); use blocks up to the file size or a larger --size"));
  const ds::aio::SwapPathInfo info = ds::aio::check_swap_path(args.dir, args.size);
  ds::aio::AioOptions base;
  base.backend = ds::aio::parse_backend(args.backend);
  base.single_submit = args.single_submit;
  base.overlap_events = !args.sequential;

  RemoveFile remove{ds::str(args.dir, "/ds_aio_bench.", ::getpid(), ".dat")};
  ds::aio::File file(remove.path, {ds::aio::OpenMode::ReadWrite, true, true});
  file.allocate(args.size);
  ds::aio::AlignedBuffer buffer(args.size);
  const bool locked = buffer.lock_pages();
  fill_pattern(buffer);
  {
    ds::aio::AioHandle warm_up(base);  // untimed: every measured write overwrites written blocks
    warm_up.sync_pwrite(file, buffer.data(), args.size, 0);
    print_header(args, info, warm_up, locked);
  }
  std::vector<Result> results;
  for (uint64_t block : args.block_sizes) {
    for (unsigned qd : args.queue_depths) {
      for (unsigned t : args.threads) {
        ds::aio::AioOptions o = base;
        o.block_size = block;
        o.queue_depth = qd;
        o.intra_op_parallelism = t;
        results.push_back(measure(args, o, file, buffer));
        const Result& r = results.back();
        std::printf("| %5s | %11u | %7u | %10.2f | %9.2f |\n", size_label(block).c_str(), qd, t, r.write_gbs,
                    r.read_gbs);
        std::fflush(stdout);
      }
    }
  }
  print_recommendation(args, results);
  return 0;
}

void add_options(CLI::App& app, BenchArgs& args, std::string& size, std::vector<std::string>& blocks) {
  app.add_option("path", args.dir, "directory to test (the swap path ZeRO-Infinity will use)")->required();
  app.add_option("--size", size, "file size, e.g. 1G (default), 512M")->capture_default_str();
  app.add_option("--block-sizes", blocks, "block sizes to sweep (default 128K,256K,1M,4M)")->delimiter(',');
  app.add_option("--queue-depths", args.queue_depths, "queue depths to sweep (default 1,4,8,16,32)")
      ->delimiter(',')
      ->check(CLI::Range(1, 4096));
  app.add_option("--threads", args.threads, "intra_op_parallelism values to sweep (default 1,2)")
      ->delimiter(',')
      ->check(CLI::Range(1, 256));
  app.add_option("--backend", args.backend, "auto | io_uring | libaio")
      ->check(CLI::IsMember({"auto", "io_uring", "libaio"}))
      ->capture_default_str();
  app.add_flag("--single-submit", args.single_submit, "one submission per request (aio.single_submit)");
  app.add_flag("--sequential", args.sequential,
               "submit a batch, wait for all of it (aio.overlap_events false)");
  app.add_option("--repeat", args.repeat, "runs per configuration; the median is reported")
      ->check(CLI::Range(1, 100))
      ->capture_default_str();
  app.add_option("--objective", args.objective, "sum (read + write, as ds_nvme_tune) | read")
      ->check(CLI::IsMember({"sum", "read"}))
      ->capture_default_str();
  app.add_flag("--verify", args.verify, "check the data after every read");
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "Measure O_DIRECT write/read throughput of a directory through ds_aio and recommend aio settings.",
      "ds-aio-bench"};
  BenchArgs args;
  std::string size = "1G";
  std::vector<std::string> blocks;
  add_options(app, args, size, blocks);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);  // --help
    std::cerr << "ds-aio-bench: error: " << e.what() << " (see ds-aio-bench --help)\n";
    return kExitUsage;
  }
  try {
    args.size = parse_size(size);
    if (!blocks.empty()) {
      args.block_sizes.clear();
      for (const auto& b : blocks) args.block_sizes.push_back(parse_size(b));
    } else {  // the default sweep, up to the file size
      args.block_sizes.erase(std::remove_if(args.block_sizes.begin(), args.block_sizes.end(),
                                            [&](uint64_t b) { return b > args.size && b > 4096; }),
                             args.block_sizes.end());
      if (args.block_sizes.empty()) args.block_sizes.push_back(args.size);
    }
  } catch (const ds::Error& e) {
    std::cerr << "ds-aio-bench: error: " << e.what() << "\n";
    return kExitUsage;
  }
  std::signal(SIGINT, on_signal);
  std::signal(SIGTERM, on_signal);
  try {
    return run(args);
  } catch (const Interrupted&) {
    std::cerr << "ds-aio-bench: interrupted; benchmark file removed\n";
    return kExitInterrupted;
  } catch (const ds::ConfigError& e) {
    std::cerr << "ds-aio-bench: error: " << e.what() << "\n";
    return kExitUsage;
  } catch (const std::exception& e) {
    std::cerr << "ds-aio-bench: error: " << e.what() << "\n";
    return kExitError;
  }
}
