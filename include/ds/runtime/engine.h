// Engine: DeepSpeed's training loop for a LibTorch module, over the ranks of a parallel layout.
//
//   auto engine = ds::initialize(model.ptr(), "ds_config.json");   // ds/deepspeed.h
//   for (...) {
//     at::Tensor loss = engine->forward([&] { return model->loss(x, y); });
//     engine->backward(loss);      // scales by 1/accumulation (and the fp16 loss scale)
//     engine->step();              // optimizer step only at the end of an accumulation window
//   }
//   engine->save_checkpoint("ckpt");               // every rank calls it; <dir>/global_step<N>
//   auto loaded = engine->load_checkpoint("ckpt"); // any data-parallel size / ZeRO stage it was saved at
//
// A composition, not a god object (docs/ARCHITECTURE.md): an EnginePlan maps the config to
// the parts once; per unit, a zero::UnitLayout says what this rank keeps; zero::FlatUnits
// hold the parameters, a zero::GradReducer averages gradients over the data-parallel group
// during backward, the stage-3 zero::ParamCoordinator gathers sharded units, an
// optim::FlatOptimizer updates fp32 masters, offload swappers keep states or weight shards on
// disk, and an LrSchedule and a LossScaler give lr and scale.
#pragma once

#include <ATen/core/Tensor.h>

#include <chrono>
#include <cmath>
#include <fstream>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "ds/comm/topology.h"
#include "ds/config/config.h"
#include "ds/optim/lr_schedule.h"
#include "ds/optim/optimizer.h"
#include "ds/pipe/executor.h"
#include "ds/runtime/engine_plan.h"
#include "ds/runtime/loss_scaler.h"
#include "ds/zero/coordinator.h"
#include "ds/zero/flat_unit.h"
#include "ds/zero/grad_sync.h"
#include "ds/zero/init.h"
#include "ds/zero/layout.h"

namespace ds {

namespace offload {
class OptimizerSwapper;
class ParamSwapper;
}  // namespace offload

namespace profiling {
class FlopsProfiler;
}  // namespace profiling

namespace ckpt {
class CheckpointReader;
struct Manifest;
struct ModelStates;
struct UnitInfo;
struct UnitShard;
}  // namespace ckpt

struct StepStats {
  int64_t step = 0;  // optimizer steps so far, skipped ones included
  bool skipped = false;
  const char* skip_reason = "";  // "fp16 overflow" or "non-finite loss or gradient"
  double loss = NAN;  // mean over the whole global batch (all ranks, all micro-batches)
  double lr = 0, grad_norm = 0, loss_scale = 1;
  double seconds = 0;  // wall time of this step (since the previous one)
  // wall_clock_breakdown: forward, backward (including backward_comm_s waiting for gradient
  // reductions), the step's wait for the last reductions (reduce_s), the optimizer step
  // (including disk_wait_s: optimizer states and, at stage 3, weight shards read from disk);
  // gather_wait_s: stage 3's waits for all-gathers during forward and backward and for the
  // persistent units regathered after the update (part of optimizer_s).
  double forward_s = 0, backward_s = 0, reduce_s = 0, optimizer_s = 0;
  double backward_comm_s = 0, gather_wait_s = 0, disk_wait_s = 0;
  int64_t rss_bytes = 0;
};

// What Engine::load_checkpoint loaded.
struct LoadedCheckpoint {
  std::string path;  // <dir>/<tag>
  std::string tag;
  int64_t global_step = 0;
  nlohmann::json client_state = nlohmann::json::object();  // as given to save_checkpoint
};

// What the engine takes besides the model, the config and the ranks.
struct EngineOptions {
  std::vector<zero::UnitSpec> units;  // default: zero::find_units(*model)
  zero::ShardedUnits sharded_units;   // stage 3: the units a zero::Init built (Init::take_units)
  // The working dtype of the units (what the model computes with); default fp32. bf16 needs
  // the config's bf16.enabled (see zero::PrecisionPolicy).
  std::optional<at::ScalarType> compute_dtype;
  std::unique_ptr<optim::FlatOptimizer> optimizer;  // default: optim::make_optimizer(config.optimizer)
  // A step whose loss or gradient norm is NaN/inf without fp16 loss scaling (fp32, bf16): by
  // default step() throws ds::Error naming the step (nothing is updated); true skips the step
  // instead, as fp16 skips an overflow (the lr schedule does not advance).
  bool skip_nonfinite_steps = false;
  // ZeRO++ (zero_quantized_weights / zero_quantized_gradients): values per fp32 scale in the
  // int8 blocks; 0: compress::kZeroPlusPlusGroup (2048). Smaller groups are more accurate and
  // send more scales (4 bytes per group); 1 makes every value its own scale (exact but for
  // rounding, what the tests use to check the wiring).
  int64_t quantization_group = 0;
};

class Engine {
 public:
  // `config` must be resolved for groups.world's size. Throws ds::ConfigError for settings this
  // engine cannot honour.
  Engine(std::shared_ptr<torch::nn::Module> model, const Config& config, comm::ParallelGroups groups,
         EngineOptions options = {});
  // Data parallelism over every rank of `world`.
  Engine(std::shared_ptr<torch::nn::Module> model, const Config& config, std::shared_ptr<comm::Communicator> world,
         EngineOptions options = {});
  ~Engine();

  // Runs f() (the model's forward and loss) and times it.
  template <typename F>
  auto forward(F&& f) {
    auto start = std::chrono::steady_clock::now();
    forward_begin();
    auto out = f();
    forward_end();
    forward_s_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    return out;
  }
  // loss: this micro-batch's mean loss (a scalar). Accumulates gradients.
  void backward(const at::Tensor& loss);
  // A pipeline stage that is not the last: the backward of this micro-batch's `output` with
  // the gradient the next stage sent (already scaled by that stage's backward(loss)).
  void backward(const at::Tensor& output, const at::Tensor& grad);

  // One optimizer step of a pipeline (DeepSpeed's train_batch): gradient_accumulation_steps
  // micro-batches through the 1F1B schedule over the pipe group (pipeline.stages; 1 is a plain
  // loop), the step at the end. `stage` is this stage's part of the model (its layers only),
  // `data(i)` micro-batch i of this data-parallel rank. Returns the step's stats; their loss
  // is the batch mean on every rank.
  StepStats train_batch(const pipe::StageModel& stage, const pipe::DataSource& data);
  // Evaluation through the pipeline (forwards only, no gradients): `micro_batches` (default
  // gradient_accumulation_steps) micro-batches of this data-parallel rank; returns the mean
  // loss over them and over the data-parallel replicas, on every rank.
  double eval_batch(const pipe::StageModel& stage, const pipe::DataSource& data, int micro_batches = 0);
  // The pipeline's output for `inputs` (e.g. logits, for generation or accuracy): one forward
  // through the stages without gradients, the last stage's output (in fp32 when floating)
  // returned on every stage of the pipe group. Collective over the pipe group, every stage
  // with the same inputs. Without pipeline stages: stage.forward(0, inputs) (in fp32 too).
  // Not counted in the next step's forward time.
  at::Tensor forward_pipeline(const pipe::StageModel& stage, const at::Tensor& inputs);
  // At an accumulation boundary: waits for the gradient reduction, unscales and checks for
  // overflow (fp16), clips, updates, steps the schedule, and returns the step's stats.
  // Between boundaries it does nothing and returns nullopt.
  std::optional<StepStats> step();

  // Checkpoints in DeepSpeed's layout (docs/CHECKPOINTS.md). Both are collective: every rank
  // calls them, between steps (not inside an accumulation window). A failure on any rank
  // throws ds::Error on every rank, with that rank's message.
  //
  // Refuses (ds::Error on every rank, nothing written) when a master weight is NaN or inf.
  // Saves to <dir>/<tag> (default "global_step<N>"): each data-parallel rank its fp32 master
  // and optimizer state chunk (at stage 0 the first the whole), rank 0 the weights, RNG state
  // and the manifest with the counters, lr schedule and loss scaler; <dir>/latest moves to
  // the new tag only after every file is written, so a crash leaves the previous checkpoint
  // loadable. `client_state` (a JSON object: e.g. the data position) comes back from
  // load_checkpoint. Returns <dir>/<tag>.
  std::string save_checkpoint(const std::string& dir, std::string tag = "",
                              const nlohmann::json& client_state = nlohmann::json::object());
  // Loads <dir>/<tag> (default: the tag named by <dir>/latest), saved at any data-parallel
  // world size and ZeRO stage 0-3: checks every file and that the model matches (parameter
  // names and shapes), loads this rank's part for the current layout, rebuilds the weights,
  // and restores the counters, lr schedule position, loss scaler (fp16) and RNG state.
  LoadedCheckpoint load_checkpoint(const std::string& dir, std::string tag = "");

  // DeepSpeed's GatheredParameters: runs f() with the named parameters (all when `names` is
  // empty) whole on every rank. With modifier_rank >= 0 (a data-parallel rank), what f() left
  // in them on that rank becomes the weights everywhere (fp32 masters and shards included).
  // Collective: every rank calls it with the same names. At stages 0-2 the weights are whole
  // anyway; f() just runs (and modifier_rank still broadcasts and updates the masters).
  void gathered_parameters(const std::vector<std::string>& names, const std::function<void()>& f,
                           int modifier_rank = -1);

  bool is_gradient_accumulation_boundary() const;
  int64_t global_step() const { return global_step_; }
  int64_t micro_step() const { return micro_step_; }
  double current_lr() const;
  double loss_scale() const { return scaler_.scale(); }
  const Config& config() const { return config_; }
  const EnginePlan& plan() const { return plan_; }
  const zero::PrecisionPolicy& precision() const { return plan_.precision; }
  // Rank 0 appends one row per optimizer step (overrides csv_monitor's path).
  void set_metrics_csv(const std::string& path);

  // The ranks: every rank (world), this rank's data-parallel group (ZeRO's shards and the
  // gradient average; sequence ranks included), and the model-parallel groups.
  const comm::ParallelGroups& groups() const { return groups_; }
  comm::Communicator& comm() { return *groups_.world; }
  int dp_rank() const { return groups_.data->rank(); }
  int dp_size() const { return groups_.data->size(); }
  // Data loaders split the global batch by sample_rank() of sample_ranks() (DeepSpeed's
  // data-parallel rank and world size): the ranks of one sequence group read the same samples,
  // and each takes its sp_rank()'th of sp_size() slices of every sequence.
  int sp_rank() const { return groups_.sequence->rank(); }
  int sp_size() const { return groups_.sequence->size(); }
  int sample_rank() const { return dp_rank() / sp_size(); }
  int sample_ranks() const { return dp_size() / sp_size(); }

  size_t unit_count() const { return units_.size(); }
  const zero::FlatUnit& unit(size_t u) const { return *units_[u].unit; }
  const zero::UnitLayout& layout(size_t u) const { return units_[u].layout; }
  // The fp32 master weights of unit u: the whole unit at stage 0, this rank's chunk of it
  // (ds::comm::chunk_of over the padded unit) at stages 1-3. Under fp32 a view of the unit's
  // weights (stage 3: the unit's shard itself). Undefined when swapped to disk.
  const at::Tensor& master(size_t u) const { return units_[u].master; }
  int zero_stage() const { return plan_.stage; }
  // Stage 3's gather / prefetch / release (null at stages 0-2).
  const zero::ParamCoordinator* coordinator() const { return coordinator_.get(); }
  const optim::FlatOptimizer& optimizer() const { return *optimizer_; }
  optim::FlatOptimizer& optimizer() { return *optimizer_; }
  // Bytes this rank holds for model states, counted from the engine's own buffers.
  struct MemoryBreakdown {
    int64_t params = 0, grads = 0, masters = 0, optimizer_state = 0;
    int64_t on_disk = 0;  // swapped out (offload_optimizer / offload_param nvme); not in total()
    int64_t total() const { return params + grads + masters + optimizer_state; }
  };
  MemoryBreakdown memory_breakdown() const;
  // Unit u's optimizer states (empty when offload_optimizer swaps them to disk).
  std::vector<at::Tensor>& optimizer_state(size_t u) { return units_[u].states; }
  // offload_optimizer nvme (null otherwise).
  const offload::OptimizerSwapper* swapper() const { return swapper_.get(); }
  offload::OptimizerSwapper* swapper() { return swapper_.get(); }
  // offload_param nvme (null otherwise).
  const offload::ParamSwapper* param_swapper() const { return param_swapper_.get(); }
  int64_t parameter_count() const;
  // Tokens per optimizer step over all ranks, for the tokens/s figure.
  void set_tokens_per_step(int64_t tokens) { tokens_per_step_ = tokens; }
  // The run's last step: the progress line then shows "step N/M" and an ETA from the recent
  // step times.
  void set_total_steps(int64_t steps) { total_steps_ = steps; }
  // The progress line for a step, as printed every steps_per_print steps.
  std::string progress_line(const StepStats& s) const;

 private:
  // One unit and everything this rank keeps for it, as its layout says.
  struct UnitState {
    std::unique_ptr<zero::FlatUnit> unit;
    zero::UnitLayout layout;
    at::Tensor master;                // fp32, layout.own.length elements; undefined when swapped
    at::Tensor grad_shard;            // stages 1-3: the averaged gradient of the own chunk (fp32)
    std::vector<at::Tensor> states;   // optimizer states; empty when swapped
  };

  void build_units(EngineOptions& options);
  void preflight_swap(const std::vector<zero::UnitLayout>& layouts) const;
  void add_unit(const zero::UnitSpec& spec, const zero::UnitLayout& layout, std::unique_ptr<zero::FlatUnit> sharded,
                std::vector<at::Tensor>& initial_masters);
  void start_offload(std::vector<at::Tensor>& initial_masters);
  void warn_hpz_across_hosts();
  void start_stage3();
  // What the step reads (norm, clipping, tied sums) for unit u: the all-reduced gradient of
  // this rank's part, this rank's shard after a reduce-scatter, or under GradSync::kNone the
  // whole unit's local gradient (the optimizer communicates itself).
  at::Tensor grad_of(size_t u) const;
  // Elements [offset, offset + n) of this rank's part of unit u's gradient.
  at::Tensor part_grad_of(size_t u, int64_t offset, int64_t n) const;
  // Where unit u's updated weights go in the param dtype (elements [offset, offset + n) of
  // its own part), or undefined when the master is the weights.
  std::optional<optim::WorkingCopy> working_copy(size_t u, int64_t offset, int64_t n);
  void working_copy_done(size_t u, int64_t n);
  void for_each_segment(const std::function<void(optim::Segment&)>& fn);
  // Writes `values` (fp32, the unit's own part) as unit u's working weights.
  void set_working(size_t u, const at::Tensor& values);
  void forward_begin();
  void forward_end();
  void run_backward(const std::function<void()>& autograd);
  pipe::StageModel as_engine_forward(const pipe::StageModel& stage);
  std::vector<size_t> units_holding(const std::vector<std::string>& names) const;
  void write_back(size_t u, int modifier_rank);
  bool unscale_and_check_overflow();
  double global_grad_norm();
  bool nonfinite_step(const StepStats& s);
  void apply_update(double lr);
  void gather_parameters();
  void log_step(const StepStats& s);
  // Checkpoints (engine_checkpoint.cpp).
  void require_step_boundary(const char* what) const;
  std::string agreed_tag(const std::string& tag);
  std::vector<ckpt::UnitInfo> checkpoint_units() const;
  std::vector<ckpt::UnitInfo> checkpoint_units_everywhere() const;
  ckpt::Manifest checkpoint_layout(const std::string& tag, const nlohmann::json& client_state) const;
  ckpt::ModelStates model_states();
  std::vector<ckpt::UnitShard> optimizer_part() const;
  void check_model_states(const ckpt::ModelStates& states) const;
  ckpt::ModelStates load_model_states_for_this_rank(const ckpt::CheckpointReader& reader) const;
  void check_stages_cover(const ckpt::Manifest& manifest) const;
  void restore_optimizer_part(const std::vector<ckpt::UnitShard>& part);
  void restore_model_states(const ckpt::ModelStates& states);
  void restore_rank_states(const ckpt::Manifest& manifest, const std::optional<std::vector<std::pair<std::string, at::Tensor>>>& saved);
  void restore_engine_state(const ckpt::Manifest& manifest);
  // Model parallelism (engine_model_parallel.cpp). Tied layers of a pipe::PipelineModule
  // held by several stages: groups and equal copies before the units are built, their units
  // after, their gradients summed at the step.
  void connect_pipeline_module();
  void find_tied_units();
  void reduce_tied_grads();
  // False for a tied layer's copy on any stage but the first holding it: that one alone is
  // counted in the gradient norm and saved in checkpoints.
  bool is_primary_copy(size_t u) const;
  // Tensor parallelism: on every rank but the tensor group's first, the parts of each unit
  // the gradient norm counts (the split parameters; the replicated ones count on the first);
  // on every rank, which slots are split (tensor_split_, for per-tensor optimizer statistics).
  void plan_tensor_parallel_norm();
  // engine_activations.cpp: the activation_checkpointing section.
  void configure_activation_checkpointing();
  void report_activation_checkpointing(int64_t step);
  // flops_profiler (engine_profiler.cpp)
  void configure_flops_profiler();
  void resume_flops_profile();
  void pause_flops_profile();
  void finish_flops_profile(const StepStats& s);
  void warn_flops_profile_missed() const;
  double grad_sq_norm(size_t u) const;

  std::shared_ptr<torch::nn::Module> model_;
  Config config_;
  comm::ParallelGroups groups_;
  EnginePlan plan_;
  std::unique_ptr<optim::FlatOptimizer> optimizer_;
  std::vector<UnitState> units_;
  struct TiedUnit {
    std::string name;  // the unit's: "tied_modules.<key>"
    size_t unit = 0;
    std::shared_ptr<comm::Communicator> group;  // the ranks holding a copy (same data and tensor coordinates)
    bool primary = false;  // this is the first stage holding it (see is_primary_copy)
  };
  std::vector<TiedUnit> tied_;
  // Per unit, the (offset, length) ranges the norm counts on this rank; empty (no unit at
  // all): every unit counts whole.
  std::vector<std::vector<std::pair<int64_t, int64_t>>> norm_ranges_;
  // With tensor parallelism, per unit and slot: split over the tensor group (each rank a slice).
  std::vector<std::vector<bool>> tensor_split_;
  std::unique_ptr<zero::GradReducer> reducer_;
  std::unique_ptr<offload::OptimizerSwapper> swapper_;     // offload_optimizer nvme
  std::unique_ptr<offload::ParamSwapper> param_swapper_;   // offload_param nvme (stage 3, bf16/fp16)
  std::unique_ptr<zero::ParamCoordinator> coordinator_;
  bool unit_aware_ = false;  // the model calls nn::run_unit (else stage 3 gathers every unit)
  zero::GradSync window_sync_ = zero::GradSync::kAllReduce;  // this accumulation window's
  bool skip_nonfinite_steps_ = false;
  optim::LrSchedule schedule_;
  LossScaler scaler_;
  int64_t micro_step_ = 0;       // backward() calls so far
  bool in_train_batch_ = false;  // a pipeline's backward runs only inside train_batch()
  int64_t global_step_ = 0;      // optimizer steps so far, skipped included
  int64_t optimizer_steps_ = 0;  // steps actually applied (Adam's t)
  int64_t global_samples_ = 0;   // samples over all ranks (train_batch_size per step)
  int64_t schedule_iteration_ = -1;  // DeepSpeed's last_batch_iteration
  double loss_sum_ = 0.0;
  int64_t tokens_per_step_ = 0;
  int64_t total_steps_ = 0;      // 0: unknown
  double recent_step_s_ = 0;     // moving average of step times (the first step, warm-up, left out)
  int64_t steps_timed_ = 0;      // steps since the engine started or loaded a checkpoint
  double forward_s_ = 0, backward_s_ = 0, backward_comm_s_ = 0;
  int64_t checkpointing_token_ = 0;  // this engine's checkpointing::configure, undone by ~Engine
  std::unique_ptr<profiling::FlopsProfiler> flops_profiler_;  // rank 0 with flops_profiler.enabled
  bool flops_profiled_ = false;
  // Stage 3's waits inside this step's forward, backward and optimizer phases only (not a
  // checkpoint's or gathered_parameters' between steps): the coordinator's totals at a phase's
  // start, and what the phases added.
  double gather_wait_mark_ = 0, read_wait_mark_ = 0, gather_wait_s_ = 0, read_wait_s_ = 0;
  void mark_gather_waits();
  void add_gather_waits();
  std::chrono::steady_clock::time_point last_step_time_;
  std::ofstream csv_;
};

// Resident and peak resident memory of this process, in bytes.
int64_t current_rss_bytes();
int64_t peak_rss_bytes();
// The path of the BLAS library this process loaded ("" if none yet).
std::string loaded_blas_library();

}  // namespace ds
