// The engine's side of the flops profiler (`flops_profiler`): on rank 0 it counts every op of
// the step after `profile_step` completed steps (DeepSpeed's global_steps == profile_step),
// forward and backward of each micro-batch, and prints DeepSpeed's report with that step's
// timing and the model FLOPs utilisation against the GEMM rate measured in the same process.
#include <ATen/Parallel.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>

#include "ds/comm/communicator.h"
#include "ds/common/error.h"
#include "ds/profiling/flops_profiler.h"
#include "ds/runtime/engine.h"
#include "ds/zero/flat_unit.h"
#include "ds/zero/precision.h"

namespace ds {

void Engine::configure_flops_profiler() {
  const FlopsProfilerConfig& f = config_.flops_profiler;
  if (!f.enabled || groups_.world->rank() != 0) return;
  if (f.output_file) {  // a path that cannot be written fails now, not after the profiled step
    std::ofstream probe(*f.output_file, std::ios::app);
    if (!probe)
      throw ConfigError(ds::str("flops_profiler.output_file: cannot write '", *f.output_file, "': ", std::strerror(errno),
                                " (create its directory or choose another path)"));
  }
  flops_profiler_ = std::make_unique<profiling::FlopsProfiler>(model_);
  int64_t params = 0;  // this rank's: ZeRO-3 leaves released parameters empty
  for (const auto& u : units_) params += u.unit->numel();
  flops_profiler_->set_parameter_count(params);
  std::printf("[ds] flops profiler: step %lld (after profile_step = %lld completed steps, as DeepSpeed counts) on "
              "rank 0, to stdout%s\n",
              static_cast<long long>(f.profile_step + 1), static_cast<long long>(f.profile_step),
              f.output_file ? (" and " + *f.output_file).c_str() : "");
  if (f.recompute_fwd_factor != 0.0)
    std::fprintf(stderr, "warning: flops_profiler.recompute_fwd_factor is not used: the profiler counts the "
                         "backward's FLOPs as executed, recomputed forwards of checkpointed blocks included\n");
  std::fflush(stdout);
}

// Counting runs inside the engine's forward and backward of the profiled step only (not the
// caller's data loading between them, nor the step's reductions and optimizer).
void Engine::resume_flops_profile() {
  if (!flops_profiler_ || flops_profiled_) return;
  if (global_step_ == config_.flops_profiler.profile_step) flops_profiler_->start();
}

void Engine::pause_flops_profile() {
  if (flops_profiler_) flops_profiler_->stop();
}

void Engine::finish_flops_profile(const StepStats& s) {
  if (!flops_profiler_ || flops_profiled_ || global_step_ != config_.flops_profiler.profile_step + 1) return;
  flops_profiler_->stop();
  flops_profiled_ = true;
  const FlopsProfilerConfig& f = config_.flops_profiler;
  flops_profiler_->set_forward_seconds(s.forward_s);
  profiling::ReportOptions o;
  o.step = s.step;
  o.module_depth = f.module_depth, o.top_modules = f.top_modules, o.detailed = f.detailed;
  o.rank = groups_.world->rank(), o.world_size = groups_.world->size();
  o.data_parallel = sample_ranks(), o.sequence_parallel = sp_size(), o.tensor_parallel = groups_.tensor->size();
  o.pipeline_parallel = groups_.pipe->size();
  o.micro_batch = config_.train_micro_batch_size_per_gpu, o.accumulation = config_.gradient_accumulation_steps;
  if (tokens_per_step_ > 0) o.tokens_per_sample = tokens_per_step_ / config_.train_batch_size;
  o.backward_s = s.backward_s, o.optimizer_s = s.reduce_s + s.optimizer_s;
  o.iteration_s = s.forward_s + s.backward_s + s.reduce_s + s.optimizer_s;
  const c10::ScalarType dtype = plan_.precision.working;
  o.gemm_flops_per_s = profiling::measure_gemm_flops(dtype);
  o.gemm_description = ds::str("at::mm 1024^3 ", zero::dtype_name(dtype), ", ", at::get_num_threads(), " threads");
  const std::string report = profiling::format_profile(flops_profiler_->profile(), o);
  std::fputs(report.c_str(), stdout);
  std::fflush(stdout);
  if (f.output_file) {
    std::ofstream out(*f.output_file, std::ios::trunc);
    out << report;
    if (!out)
      std::fprintf(stderr, "warning: flops_profiler.output_file: could not write '%s': %s\n", f.output_file->c_str(),
                   std::strerror(errno));
  }
  last_step_time_ = std::chrono::steady_clock::now();  // the report's time is not the next step's
}

void Engine::warn_flops_profile_missed() const {
  if (flops_profiler_ && !flops_profiled_ && global_step_ > 0)
    std::fprintf(stderr, "warning: flops_profiler: no profile: profile_step %lld was never reached (the run took %lld "
                         "steps; profile_step counts completed steps, as DeepSpeed's global_steps)\n",
                 static_cast<long long>(config_.flops_profiler.profile_step), static_cast<long long>(global_step_));
}

}  // namespace ds
