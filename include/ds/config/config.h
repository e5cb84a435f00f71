// ds::Config: a DeepSpeed ds_config.json, parsed strictly into typed structs.
//
// DeepSpeed's key names and its *code* defaults; comments in the JSON are accepted. Every
// problem is one ds::ConfigError line that names the file and the JSON path:
//   ds_config.json: zero_optimization.stgae: unknown key (did you mean "stage"?)
//   ds_config.json: fp16.enabled: expected a boolean, got string "true"
// Deprecated keys DeepSpeed still accepts are mapped, with a one-line note in warnings().
//
// The batch identity (train_batch_size = micro x accumulation x data-parallel size) needs
// the world size, which the JSON does not know: resolve() derives the missing batch keys and
// the parallel layout. Member names are the JSON key names.
//
//   ds::Config cfg = ds::Config::load("ds_config.json");
//   cfg.resolve(world_size);                      // throws ds::ConfigError with the arithmetic
//   for (const auto& w : cfg.warnings()) std::cerr << "warning: " << w << "\n";
//   int64_t micro = cfg.train_micro_batch_size_per_gpu;
//   if (cfg.zero_optimization.stage == 3) ...
//   std::cout << cfg.to_json().dump(2);           // fully resolved, DeepSpeed key names
#pragma once

#include <cstdint>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "ds/config/optimizer.h"
#include "ds/config/sections.h"
#include "ds/config/zero.h"

namespace ds {

// What resolve() needs beyond the JSON. The batch and step fields fill keys the config leaves
// absent or "auto" (0: unknown), as the Hugging Face Trainer fills "auto" from its arguments.
struct ResolveOptions {
  int64_t world_size = 1;
  int64_t train_micro_batch_size_per_gpu = 0;
  int64_t gradient_accumulation_steps = 0;
  int64_t total_num_steps = 0;  // for scheduler.params.total_num_steps "auto"
};

struct Config {
  // Batch keys: 0 until resolve() when absent or "auto"; afterwards all three are set.
  int64_t train_batch_size = 0;
  int64_t train_micro_batch_size_per_gpu = 0;
  int64_t gradient_accumulation_steps = 0;

  OptimizerConfig optimizer;
  SchedulerConfig scheduler;
  Fp16Config fp16;
  Bf16Config bf16;
  ZeroConfig zero_optimization;
  AioConfig aio;
  ActivationCheckpointingConfig activation_checkpointing;
  SparseAttentionConfig sparse_attention;
  FlopsProfilerConfig flops_profiler;
  CommsLoggerConfig comms_logger;
  FileMonitorConfig csv_monitor;
  FileMonitorConfig tensorboard;
  WandbConfig wandb;
  CheckpointConfig checkpoint;
  DataTypesConfig data_types;
  PipelineConfig pipeline;
  TensorParallelConfig tensor_parallel;
  // Ulysses sequence parallelism: this many ranks of the data axis split every sequence (the
  // model exchanges heads for sequence around attention; ds::Gpt with a sequence group).
  int64_t sequence_parallel_size = 1;

  double gradient_clipping = 0.0;          // 0: off
  std::optional<int64_t> steps_per_print;  // empty or 0: never (DeepSpeed's default since PR #6602; was 10)
  bool wall_clock_breakdown = false;
  bool memory_breakdown = false;
  bool prescale_gradients = false;
  double gradient_predivide_factor = 1.0;
  std::optional<DataType> communication_data_type;  // empty: the training precision
  bool zero_allow_untested_optimizer = false;
  bool zero_force_ds_cpu_optimizer = true;
  bool dump_state = false;
  bool dataloader_drop_last = false;
  int64_t seed = 1234;  // deepspeed.cpp key: seeds parameter init and data order

  // Filled by resolve().
  ParallelLayout parallel;

  // Parses JSON text (comments allowed). `source` names the text in messages.
  static Config parse(std::string_view json_text, const std::string& source = "ds_config.json");
  // Reads and parses a file; messages name `path`.
  static Config load(const std::string& path);
  // Validates an already-parsed document (no duplicate-key detection is possible here).
  static Config from_json(const nlohmann::json& json, const std::string& source = "ds_config.json");

  // Derives the batch keys and the parallel layout for `options.world_size` ranks and checks
  // the batch identity; throws ds::ConfigError with the arithmetic when it does not hold.
  void resolve(const ResolveOptions& options);
  void resolve(int64_t world_size);
  bool resolved() const { return resolved_; }

  // The configuration with every default filled in, under DeepSpeed's key names. Values still
  // unknown (batch keys before resolve(), total_num_steps "auto") are written as "auto".
  // Parsing the result gives back an equal Config.
  nlohmann::json to_json() const;
  // Every setting as one "/json/path = value" line (and the resolved layout): what ranks
  // compare to agree they run the same config (ds::comm::check_ranks_agree).
  std::string fingerprint() const;

  // One line each, "<source>: <path>: <text>" (deprecated keys, ignored settings, "auto" defaults).
  const std::vector<std::string>& warnings() const { return warnings_; }
  const std::string& source() const { return source_; }

 private:
  std::vector<std::string> warnings_;
  std::string source_ = "ds_config.json";
  bool resolved_ = false;
};

}  // namespace ds
