// The flops profiler (DeepSpeed's `flops_profiler`): the FLOPs, MACs, parameters and forward
// latency of each module of a LibTorch model, and the FLOPs the backward really executed.
//
// LibTorch gives a C++ module no hooks, so the profiler listens where LibTorch's own profiler
// does: to the dispatcher's RecordFunction events of the thread that runs the model. Every
// ATen op is priced from its input shapes (op_cost); a module is a user scope, the one
// LibTorch's profiler shows too:
//
//   at::Tensor Block::forward(const at::Tensor& x) {
//     RECORD_USER_SCOPE("attn");                      // ops below count to "<parent>.attn"
//     ...
//   }
//
//   ds::profiling::FlopsProfiler profiler(model);
//   profiler.start();
//   at::Tensor loss = model->loss(x, y);  loss.backward();
//   profiler.stop();
//   std::cout << ds::profiling::format_profile(profiler.profile(), {});
//
// Scopes nest into a tree of dotted names ("h.3.attn"); a scope called again adds to the same
// node. A module's parameters are the model's parameters its ops read (a tied weight counts in
// every module that reads it; the root counts each once). Ops outside every scope count to the
// root only. The backward is counted as a total (autograd nodes are not modules): matmuls,
// elementwise work and the recomputed forwards of checkpointed blocks included.
#pragma once

#include <ATen/core/ivalue.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace torch::nn {
class Module;
}

namespace ds::profiling {

// The arithmetic of one ATen op from its inputs: matmuls 2 FLOPs per multiply-add (MACs
// counted too), elementwise ops and reductions one FLOP per element, normalisations five.
// `known` is false for ops the profiler does not price (views, copies, composite ops whose
// parts it prices instead).
struct OpCost {
  double flops = 0, macs = 0;
  bool known = false;
};
OpCost op_cost(const std::string& name, c10::ArrayRef<const c10::IValue> inputs);

struct ModuleStats {
  std::string name;  // dotted path; the root is the model
  int depth = 0;     // the root is 0
  int64_t params = 0;
  double flops = 0, macs = 0;  // forward, this module and everything below it
  double latency_s = 0;        // forward, summed over its calls (the root: the profiled forwards)
  int64_t calls = 0;
  std::vector<size_t> children;  // indices into Profile::modules, in the order first called
};

struct Profile {
  std::vector<ModuleStats> modules;  // [0] is the root
  double forward_flops = 0, forward_macs = 0;
  double backward_flops = 0, backward_macs = 0;
  double elapsed_s = 0;  // between start() and stop()
  std::map<std::string, double> forward_flops_by_op, backward_flops_by_op;
};

class FlopsProfiler {
 public:
  // `name`: the root's name (default: the model's).
  explicit FlopsProfiler(std::shared_ptr<torch::nn::Module> model, std::string name = "");
  ~FlopsProfiler();
  FlopsProfiler(const FlopsProfiler&) = delete;
  FlopsProfiler& operator=(const FlopsProfiler&) = delete;

  // Counts what the calling thread runs until stop(), adding to what is counted already.
  void start();
  void stop();
  bool running() const { return handle_ != 0; }
  // The root's forward latency, when the caller times the forward itself (an engine does).
  void set_forward_seconds(double s);
  // The root's parameters, when the model's tensors do not show them (ZeRO-3 keeps released
  // parameters empty; a module's count is taken when its ops read them gathered).
  void set_parameter_count(int64_t n);
  Profile profile() const;

  struct State;

 private:
  std::unique_ptr<State> state_;
  uint64_t handle_ = 0;
};

// What the report says besides the counts: the step's timing and shape.
struct ReportOptions {
  int64_t step = 0;  // 0: not from a training step
  int64_t module_depth = -1;  // -1: every depth
  int64_t top_modules = 1;
  bool detailed = true;
  // data_parallel: the ranks that read distinct samples; sequence_parallel: the ranks that
  // split each of them (Ulysses), so a rank computes 1/sequence_parallel of its tokens.
  int rank = 0, world_size = 1, data_parallel = 1, tensor_parallel = 1, pipeline_parallel = 1, sequence_parallel = 1;
  int64_t micro_batch = 0, accumulation = 1, tokens_per_sample = 0;
  double backward_s = 0, optimizer_s = 0, iteration_s = 0;  // 0: not measured
  double gemm_flops_per_s = 0;  // the measured GEMM rate; 0: no utilisation line
  std::string gemm_description;
};
std::string format_profile(const Profile& profile, const ReportOptions& options);

// The FLOP rate of at::mm on n x n matrices of `dtype` on this machine with the current
// threads, measured for about `seconds` (one warm-up product first).
double measure_gemm_flops(c10::ScalarType dtype, int64_t n = 1024, double seconds = 0.3);

// n with a decimal prefix and the unit: si(1.234e9, "FLOPS") = "1.23 GFLOPS", si(256) = "256".
std::string si(double n, const std::string& unit = "", int precision = 2);

}  // namespace ds::profiling
