// The smaller sections of a ds_config.json, as typed structs: precision, activation
// checkpointing, sparse attention, profilers and monitors, checkpointing, pipeline and
// tensor parallelism. Member names are the JSON key names; defaults are DeepSpeed's code defaults.
//
//   if (config.fp16.enabled) scaler.start(config.fp16.initial_dynamic_scale());
#pragma once

#include <cmath>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace ds {

// `fp16`: mixed precision with loss scaling. loss_scale 0 means dynamic scaling.
struct Fp16Config {
  bool enabled = false;
  bool auto_cast = false;
  double loss_scale = 0.0;
  int64_t initial_scale_power = 16;
  int64_t loss_scale_window = 1000;
  int64_t hysteresis = 2;
  bool consecutive_hysteresis = false;
  int64_t min_loss_scale = 1;

  bool dynamic_loss_scale() const { return loss_scale == 0.0; }
  double initial_dynamic_scale() const { return std::ldexp(1.0, static_cast<int>(initial_scale_power)); }
};

// `bf16` (older name: `bfloat16`). Loss-scale keys found here (older configs) are accepted and ignored.
struct Bf16Config {
  bool enabled = false;
  bool immediate_grad_update = false;
  bool check_grad_overflow = false;
};

// `activation_checkpointing`.
struct ActivationCheckpointingConfig {
  bool present = false;  // the section is in the config (ds-train then checkpoints every block)
  bool partition_activations = false;
  bool cpu_checkpointing = false;
  bool contiguous_memory_optimization = false;
  std::optional<int64_t> number_checkpoints;
  bool synchronize_checkpoint_boundary = false;
  bool profile = false;
};

enum class SparseMode { kDense, kFixed, kVariable, kBigBird, kBSLongformer };
const char* sparse_mode_name(SparseMode mode);  // "dense", "fixed", "variable", "bigbird", "bslongformer"
enum class SparseDirection { kBidirectional, kUnidirectional };

// `sparse_attention`: present means enabled. Each mode reads only its own keys (as DeepSpeed's
// get_sparse_*_config do); the rest keep these defaults.
struct SparseAttentionConfig {
  bool enabled = false;
  SparseMode mode = SparseMode::kFixed;
  int64_t block = 16;
  bool different_layout_per_head = false;
  int64_t num_local_blocks = 4;                                  // fixed
  int64_t num_global_blocks = 1;                                 // fixed, bigbird
  SparseDirection attention = SparseDirection::kBidirectional;   // fixed, variable
  bool horizontal_global_attention = false;                      // fixed, variable
  int64_t num_different_global_patterns = 1;                     // fixed
  int64_t num_random_blocks = 0;                                 // variable, bigbird
  std::vector<int64_t> local_window_blocks{4};                   // variable
  std::vector<int64_t> global_block_indices{0};                  // variable, bslongformer
  std::optional<std::vector<int64_t>> global_block_end_indices;  // variable, bslongformer
  int64_t num_sliding_window_blocks = 3;                         // bigbird, bslongformer
};

// `flops_profiler`.
struct FlopsProfilerConfig {
  bool enabled = false;
  double recompute_fwd_factor = 0.0;
  int64_t profile_step = 1;
  int64_t module_depth = -1;
  int64_t top_modules = 1;
  bool detailed = true;
  std::optional<std::string> output_file;
};

// `comms_logger`.
struct CommsLoggerConfig {
  bool enabled = false;
  bool verbose = false;
  bool prof_all = true;
  bool debug = false;
  std::vector<std::string> prof_ops;
};

// `csv_monitor` and `tensorboard` (deepspeed.cpp writes CSV; tensorboard/wandb are parsed, log-only).
struct FileMonitorConfig {
  bool enabled = false;
  std::string output_path;
  std::string job_name = "DeepSpeedJobName";
};

// `wandb`.
struct WandbConfig {
  bool enabled = false;
  std::optional<std::string> group;
  std::optional<std::string> team;
  std::string project = "deepspeed";
};

enum class TagValidation { kWarn, kIgnore, kFail };

// `checkpoint`.
struct CheckpointConfig {
  TagValidation tag_validation = TagValidation::kWarn;  // "Warn" | "Ignore" | "Fail" (any case)
  bool load_universal = false;
  bool use_node_local_storage = false;
  bool parallel_write_pipeline_stage = false;  // "parallel_write": {"pipeline_stage": ...}
};

// Storage types for `communication_data_type` and `data_types.grad_accum_dtype`.
enum class DataType { kFp32, kFp16, kBf16 };
const char* data_type_name(DataType type);  // "fp32", "fp16", "bf16"

// `data_types`.
struct DataTypesConfig {
  std::optional<DataType> grad_accum_dtype;  // empty: decided by the precision mode
};

// `pipeline`. stages 0 means "auto" (DeepSpeed's default): 1 stage unless the program sets it.
struct PipelineConfig {
  int64_t stages = 0;
  std::string partition = "best";  // "best" | "parameters" | "uniform" | "type:<regex>"
  bool seed_layers = false;
  int64_t activation_checkpoint_interval = 0;
  bool pipe_partitioned = true;
  bool grad_partitioned = true;
};

// `tensor_parallel`: autotp_size 0 means disabled (1 rank); DeepSpeed's nested "tp": {"tp_size": N} is
// accepted as the same setting.
struct TensorParallelConfig {
  int64_t autotp_size = 0;
  bool tp_overlap_comm = false;
};

// The parallel layout, filled by Config::resolve(): world = pipeline x tensor x sequence x
// data. data_parallel_size counts the ranks that read distinct samples (the batch identity's
// factor, DeepSpeed's dp world size); ZeRO shards over data x sequence ranks.
struct ParallelLayout {
  int64_t world_size = 0;
  int64_t pipeline_stages = 0;
  int64_t tensor_parallel_size = 0;
  int64_t sequence_parallel_size = 0;
  int64_t data_parallel_size = 0;
  int64_t zero_group_size() const { return data_parallel_size * sequence_parallel_size; }
};

}  // namespace ds
