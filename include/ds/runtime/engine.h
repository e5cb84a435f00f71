// Engine: DeepSpeed's training loop for a LibTorch module over data-parallel ranks.
//
//   auto comm = ds::comm::init_from_env();
//   ds::Config config = ds::Config::load("ds_config.json");
//   config.resolve(comm->size());
//   ds::Engine engine(model, config, comm);
//   for (...) {
//     at::Tensor loss = engine.forward([&] { return model->loss(x, y); });
//     engine.backward(loss);      // scales by 1/accumulation (and the fp16 loss scale)
//     engine.step();              // optimizer step only at the end of an accumulation window
//   }
//   engine.save_checkpoint("ckpt");            // every rank calls it; <dir>/global_step<N>
//   auto loaded = engine.load_checkpoint("ckpt");  // any world size / ZeRO stage it was saved at
//
// Composition, not a god object: FlatUnits hold the parameters, a GradReducer averages
// gradients during backward, a FlatOptimizer updates fp32 masters, an LrSchedule and a
// LossScaler give lr and scale. Under bf16/fp16 the engine keeps fp32 masters and the model's
// weights hold the bf16/fp16-rounded values, computed in fp32: on CPUs without native bf16
// GEMMs, half precision is a storage and communication format (see docs/ARCHITECTURE.md).
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

#include "ds/comm/communicator.h"
#include "ds/config/config.h"
#include "ds/runtime/flat_unit.h"
#include "ds/runtime/grad_reducer.h"
#include "ds/runtime/loss_scaler.h"
#include "ds/runtime/lr_schedule.h"
#include "ds/runtime/optimizer.h"
#include "ds/runtime/param_coordinator.h"

namespace ds {

class OptimizerSwapper;
class ParamSwapper;

namespace ckpt {
struct Manifest;
struct ModelStates;
struct UnitInfo;
struct UnitShard;
}  // namespace ckpt

enum class Precision { FP32, BF16, FP16 };
const char* to_string(Precision p);
Precision precision_of(const Config& config);

struct StepStats {
  int64_t step = 0;  // optimizer steps so far, skipped ones included
  bool skipped = false;
  double loss = NAN;  // mean over the whole global batch (all ranks, all micro-batches)
  double lr = 0, grad_norm = 0, loss_scale = 1;
  double seconds = 0;  // wall time of this step (since the previous one)
  double forward_s = 0, backward_s = 0, reduce_s = 0, optimizer_s = 0;
  int64_t rss_bytes = 0;
};

// What Engine::load_checkpoint loaded.
struct LoadedCheckpoint {
  std::string path;  // <dir>/<tag>
  std::string tag;
  int64_t global_step = 0;
  nlohmann::json client_state = nlohmann::json::object();  // as given to save_checkpoint
};

class Engine {
 public:
  // `config` must be resolved for comm->size() ranks. `units` default to ds::find_units(*model).
  // Throws ds::ConfigError for settings this engine cannot honour.
  Engine(std::shared_ptr<torch::nn::Module> model, const Config& config, std::shared_ptr<comm::Communicator> comm,
         std::vector<UnitSpec> units = {});
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
  // At an accumulation boundary: waits for the gradient reduction, unscales and checks for
  // overflow (fp16), clips, updates, steps the schedule, and returns the step's stats.
  // Between boundaries it does nothing and returns nullopt.
  std::optional<StepStats> step();

  // Checkpoints in DeepSpeed's layout (docs/CHECKPOINTS.md). Both are collective: every
  // data-parallel rank calls them, between steps (not inside an accumulation window). A
  // failure on any rank throws ds::Error on every rank, with that rank's message.
  //
  // Saves to <dir>/<tag> (default "global_step<N>"): each rank its fp32 master and optimizer
  // state chunk (at stage 0 rank 0 the whole), rank 0 the weights, RNG state and the
  // manifest with the counters, lr schedule and loss scaler; <dir>/latest moves to the new
  // tag only after every file is written, so a crash leaves the previous checkpoint loadable.
  // `client_state` (a JSON object: e.g. the data position) comes back from load_checkpoint.
  // Returns <dir>/<tag>.
  std::string save_checkpoint(const std::string& dir, std::string tag = "",
                              const nlohmann::json& client_state = nlohmann::json::object());
  // Loads <dir>/<tag> (default: the tag named by <dir>/latest), saved at any data-parallel
  // world size and ZeRO stage 0-3: checks every file and that the model matches (parameter
  // names and shapes), loads this rank's part for the current layout, rebuilds the weights,
  // and restores the counters, lr schedule position, loss scaler (fp16) and RNG state.
  LoadedCheckpoint load_checkpoint(const std::string& dir, std::string tag = "");

  // DeepSpeed's GatheredParameters: runs f() with the named parameters (all when `names` is
  // empty) whole on every rank. With modifier_rank >= 0, what f() left in them on that rank
  // becomes the weights everywhere (fp32 masters and shards included). Collective: every rank
  // calls it with the same names. At stages 0-2 the weights are whole anyway; f() just runs
  // (and modifier_rank still broadcasts and updates the masters).
  void gathered_parameters(const std::vector<std::string>& names, const std::function<void()>& f,
                           int modifier_rank = -1);

  bool is_gradient_accumulation_boundary() const;
  int64_t global_step() const { return global_step_; }
  int64_t micro_step() const { return micro_step_; }
  double current_lr() const;
  double loss_scale() const { return scaler_.scale(); }
  const Config& config() const { return config_; }
  Precision precision() const { return precision_; }
  // Rank 0 appends one row per optimizer step (overrides csv_monitor's path).
  void set_metrics_csv(const std::string& path);
  comm::Communicator& comm() { return *comm_; }
  const std::vector<std::unique_ptr<FlatUnit>>& units() const { return units_; }
  // The fp32 master weights of unit u: the whole unit at stage 0, this rank's chunk of it
  // (ds::comm::chunk_of over the padded unit) at stages 1-3. Under fp32 a view of the unit
  // (stage 3: the unit's shard itself).
  const at::Tensor& master(size_t u) const { return masters_[u]; }
  int zero_stage() const { return stage_; }
  // Stage 3's gather / prefetch / release (null at stages 0-2).
  const ParamCoordinator* coordinator() const { return coordinator_.get(); }
  // Bytes this rank holds for model states, counted from the engine's own buffers.
  struct MemoryBreakdown {
    int64_t params = 0, grads = 0, masters = 0, optimizer_state = 0;
    int64_t on_disk = 0;  // swapped out (offload_optimizer / offload_param nvme); not in total()
    int64_t total() const { return params + grads + masters + optimizer_state; }
  };
  MemoryBreakdown memory_breakdown() const;
  // Unit u's optimizer states (empty when offload_optimizer swaps them to disk).
  std::vector<at::Tensor>& optimizer_state(size_t u) { return states_[u]; }
  // offload_optimizer nvme (null otherwise).
  const OptimizerSwapper* swapper() const { return swapper_.get(); }
  OptimizerSwapper* swapper() { return swapper_.get(); }
  int64_t parameter_count() const;
  // Tokens per optimizer step over all ranks, for the tokens/s figure.
  void set_tokens_per_step(int64_t tokens) { tokens_per_step_ = tokens; }
  // The progress line for a step, as printed every steps_per_print steps.
  std::string progress_line(const StepStats& s) const;

 private:
  // What the optimizer reads for unit u: the unit's gradient (stage 0) or this rank's shard.
  const at::Tensor& grad_of(size_t u) const;
  void forward_begin();
  void forward_end();
  std::vector<size_t> units_holding(const std::vector<std::string>& names) const;
  void write_back(size_t u, int modifier_rank);
  void start_swapping(std::vector<at::Tensor>& initial_masters);
  void set_working_copy(size_t u, int64_t offset, const at::Tensor& master);
  void store_shard(size_t u, int64_t offset, const at::Tensor& values);
  int64_t gather_from_bytes(size_t u) const { return grad_shards_[u].numel() * 2; }
  bool unscale_and_check_overflow();
  double global_grad_norm();
  void apply_update(double lr);
  void gather_parameters();
  void log_step(const StepStats& s);
  // Checkpoints (engine_checkpoint.cpp).
  void require_step_boundary(const char* what) const;
  std::string agreed_tag(const std::string& tag);
  std::vector<ckpt::UnitInfo> checkpoint_units() const;
  ckpt::Manifest checkpoint_layout(const std::string& tag, const nlohmann::json& client_state) const;
  ckpt::ModelStates model_states();
  std::vector<ckpt::UnitShard> optimizer_part() const;
  void check_model_states(const ckpt::ModelStates& states) const;
  void restore_optimizer_part(const std::vector<ckpt::UnitShard>& part);
  void restore_model_states(const ckpt::ModelStates& states);
  void restore_engine_state(const ckpt::Manifest& manifest);

  std::shared_ptr<torch::nn::Module> model_;
  Config config_;
  Precision precision_;
  std::shared_ptr<comm::Communicator> comm_;
  std::vector<std::unique_ptr<FlatUnit>> units_;
  int stage_ = 0;
  std::vector<at::Tensor> masters_;
  std::vector<at::Tensor> grad_shards_;  // stages 1-2: this rank's averaged gradient chunk per unit
  std::vector<std::vector<at::Tensor>> states_;
  std::unique_ptr<FlatOptimizer> optimizer_;
  std::unique_ptr<GradReducer> reducer_;
  std::vector<at::Tensor> gather_from_;  // stage 3 under bf16/fp16: the shard in half precision
  std::unique_ptr<ParamCoordinator> coordinator_;
  std::unique_ptr<OptimizerSwapper> swapper_;  // offload_optimizer nvme
  std::unique_ptr<ParamSwapper> param_swapper_;  // offload_param nvme (stage 3, bf16/fp16)
  bool unit_aware_ = false;  // the model calls zero::run_unit (else stage 3 gathers every unit)
  LrSchedule schedule_;
  LossScaler scaler_;
  int64_t micro_step_ = 0;       // backward() calls so far
  int64_t global_step_ = 0;      // optimizer steps so far, skipped included
  int64_t optimizer_steps_ = 0;  // steps actually applied (Adam's t)
  int64_t global_samples_ = 0;   // samples over all ranks (train_batch_size per step)
  int64_t schedule_iteration_ = -1;  // DeepSpeed's last_batch_iteration
  double loss_sum_ = 0.0;
  int64_t tokens_per_step_ = 0;
  double forward_s_ = 0, backward_s_ = 0;
  std::chrono::steady_clock::time_point last_step_time_;
  std::ofstream csv_;
};

// Resident and peak resident memory of this process, in bytes.
int64_t current_rss_bytes();
int64_t peak_rss_bytes();
// The path of the BLAS library this process loaded ("" if none yet).
std::string loaded_blas_library();

}  // namespace ds
