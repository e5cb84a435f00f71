// Trains a tiny GPT on the embedded "reverse" task with a given ds_config, the way ds-train
// does (global batch split by rank and micro-batch), and returns what the tests compare.
#pragma once

#include <ATen/ATen.h>

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "ds/comm/communicator.h"
#include "ds/data/dataset.h"
#include "ds/models/gpt.h"
#include "ds/runtime/engine.h"

namespace ds::test {

struct TrainResult {
  std::vector<double> losses;  // global-batch mean per step
  std::vector<double> scales;  // loss scale per step
  std::vector<bool> skipped;
  at::Tensor weights;          // the model's full weights, every unit concatenated (unpadded)
  at::Tensor key_bias;         // bool mask over `weights`: the attention key biases, whose true
                               // gradient is 0 (softmax ignores a shift), so what they get is
                               // rounding noise that Adam amplifies to +-lr steps
};

struct TinyShape {
  TinyShape(int64_t layers = 2, int64_t width = 32) : n_layer(layers), d_model(width) {}
  int64_t n_layer, d_model;
  double dropout = 0.0;            // GptConfig::dropout
  int64_t checkpoint_blocks = 0;   // GptConfig::checkpoint_blocks
  bool zero_init = false;  // build the model under ds::zero::Init (shards at once at stage 3)
  std::optional<at::ScalarType> compute_dtype;  // EngineOptions::compute_dtype
  // EngineOptions::optimizer (null: the config's)
  std::function<std::unique_ptr<optim::FlatOptimizer>()> optimizer;
  int tensor = 1;  // tensor-parallel ranks (the config's tensor_parallel.autotp_size must agree)
  int sequence = 1;  // sequence-parallel ranks (the config's sequence_parallel_size must agree);
                     // the examples are padded to a multiple and each rank takes its slice
  int64_t n_head = 2;
  int64_t seq_len = 0;  // the model's context; 0: the task's
  int64_t quantization_group = 0;  // EngineOptions::quantization_group (ZeRO++'s int8 blocks)
};

// The tiny GPT (seed 7) and its engine, trained step by step: train_to(10), save, ... The
// data of step s depends only on s, so a run resumed from a checkpoint sees the same batches.
class TinyRun {
 public:
  // `config_json` is a full ds_config; it is resolved for comm->size() ranks.
  TinyRun(std::shared_ptr<comm::Communicator> comm, const std::string& config_json, TinyShape shape = {});
  Engine& engine() { return *engine_; }
  Gpt& model() { return model_; }
  Dataset& data() { return *data_; }
  // Trains from the engine's global step up to `step`, recording losses, scales and skips.
  // `before_backward` (optional) runs before each backward with the engine and the step index.
  void train_to(int64_t step, const std::function<void(Engine&, int)>& before_backward = {});
  // What has been recorded so far, and the current weights.
  // The current weights are gathered (collective at stage 3: every rank calls it); under
  // tensor parallelism they are this rank's slices.
  TrainResult result() const;

 private:
  std::shared_ptr<comm::Communicator> comm_;
  std::unique_ptr<Dataset> data_;
  Gpt model_{nullptr};
  std::unique_ptr<Engine> engine_;
  TrainResult recorded_;
  int data_rank_ = 0, data_size_ = 1;  // the batch is split over the data group (its sample ranks)
  seq::Group sequence_;                // sequence parallelism: each rank takes a slice of each example
};

// TinyRun for `steps` steps from scratch.
// `before_backward` (optional) runs before each backward with the engine and the step index
// (to inject faults with tensor hooks).
TrainResult train_tiny(std::shared_ptr<comm::Communicator> comm, const std::string& config_json, int steps,
                       const std::function<void(Engine&, int)>& before_backward = {});

// The same with a model shape / engine options of its own.
TrainResult train_tiny_shape(std::shared_ptr<comm::Communicator> comm, const std::string& config_json, int steps,
                             TinyShape shape);

// A world-of-one communicator (no network), for in-process baselines.
std::shared_ptr<comm::Communicator> solo();

double max_abs_diff(const std::vector<double>& a, const std::vector<double>& b);
// The fraction of the weights (outside the key biases of `b`) more than 1e-4 apart.
double parted_fraction(const TrainResult& a, const TrainResult& b);

// The external reference: the same tiny GPT (seed 7, `shape`) on the same data, trained by a
// plain LibTorch loop in one process — no engine — with torch::optim::AdamW (constant lr)
// and torch::nn::utils::clip_grad_norm_ (clip <= 0: none), `batch` examples per step.
struct PlainAdamW {
  double lr = 0.01, weight_decay = 0.01, eps = 1e-6, clip = 0.5;
  int64_t batch = 8;
};
TrainResult train_plain_libtorch(const PlainAdamW& opt, int steps, TinyShape shape = {});
// The ds_config of that loop (PlainAdamW's defaults): `batch` examples per step, `micro` per
// rank and micro-batch, ZeRO `stage` (at 3 no unit persists, so every unit is gathered),
// `zero_keys` inside zero_optimization, `top_keys` at the top level (each starting ", ").
std::string plain_adamw_config(int stage, int64_t micro, const std::string& zero_keys = "",
                               const std::string& top_keys = "", int64_t batch = 8);
// The same loop with any update: `update(model, step)` runs after each backward (under
// NoGradGuard) and changes the parameters from their .grad(); `batch` examples per step.
TrainResult train_plain_loop(const std::function<void(Gpt&, int)>& update, int steps, int64_t batch,
                             TinyShape shape = {});

// The external reference for 1-bit Adam: `world` ranks simulated in one process by a plain
// LibTorch loop (no engine, no communicator). Each simulated rank takes its slice of the
// batch; steps 1..freeze_step are AdamW on the averaged gradient; later steps follow the
// algorithm written out in tensors, unit by unit (zero::find_units): local momentum, worker
// compression with error feedback, per-chunk server averaging and compression, frozen
// variance, and no momentum where the variance is 0. No clipping; bias correction as
// OneBitAdam's default.
struct PlainOneBitAdam {
  double lr = 0.01, weight_decay = 0.01, eps = 1e-6, beta1 = 0.9, beta2 = 0.999;
  int64_t freeze_step = 3;
  int64_t batch = 8;
  int64_t accumulation = 1;  // micro-batches per rank and step, split as the engine splits them
};
TrainResult train_plain_onebit_adam(const PlainOneBitAdam& opt, int world, int steps, TinyShape shape = {});

// The same for 1-bit Lamb (DeepSpeed's OnebitLamb, tensor by tensor): Lamb without bias
// correction on the averaged gradient for freeze_step steps, keeping each tensor's running
// average of its trust ratio; then the momentum, scaled per tensor, compressed unit by unit
// as above, the fresh variance from the reconstructed gradient, and the frozen ratio times
// the bounded factor.
struct PlainOneBitLamb {
  double lr = 0.01, weight_decay = 0.01, eps = 1e-6, beta1 = 0.9, beta2 = 0.999, max_coeff = 10.0, min_coeff = 0.01;
  double coeff_beta = 0.9, factor_max = 4.0, factor_min = 0.5, factor_threshold = 0.1;
  int64_t freeze_step = 3;
  int64_t batch = 8;
  int64_t accumulation = 1;
  std::string json() const;  // the config's optimizer section
};
TrainResult train_plain_onebit_lamb(const PlainOneBitLamb& opt, int world, int steps, TinyShape shape = {});

// The same for 0/1 Adam: variance and exact averages at exponentially spaced steps, the
// compressed gradient in between, then local steps on each simulated rank's own copy of the
// weights with compressed syncs (no bias correction, as ZeroOneAdam).
struct PlainZeroOneAdam {
  double lr = 0.01, weight_decay = 0.01, eps = 1e-3, beta1 = 0.9, beta2 = 0.999;
  int64_t var_freeze_step = 6, var_update_scaler = 2, local_step_scaler = 2, local_step_clipper = 4;
  int64_t batch = 8;
  int64_t accumulation = 1;  // micro-batches per rank and step, split as the engine splits them
};
// The weights are rank 0's.
TrainResult train_plain_zero_one_adam(const PlainZeroOneAdam& opt, int world, int steps, TinyShape shape = {});

}  // namespace ds::test
