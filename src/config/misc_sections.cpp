// Precision (fp16, bf16), activation checkpointing, profilers, monitors, checkpoint and data types.
#include "ds/common/error.h"
#include "sections.h"

namespace ds {

const char* data_type_name(DataType type) {
  switch (type) {
    case DataType::kFp32:
      return "fp32";
    case DataType::kFp16:
      return "fp16";
    case DataType::kBf16:
      return "bf16";
  }
  return "fp32";
}

}  // namespace ds

namespace ds::config_detail {

namespace {

const Schema<Fp16Config>& fp16_schema() {
  using F = Fp16Config;
  static const Schema<F> s =
      Schema<F>()
          .field("enabled", &F::enabled)
          .field("auto_cast", &F::auto_cast)
          .field("loss_scale", &F::loss_scale, at_least(0))
          .field("initial_scale_power", &F::initial_scale_power, between(0, 64))
          .field("loss_scale_window", &F::loss_scale_window, at_least(1))
          .field("hysteresis", &F::hysteresis, at_least(1))
          .field("consecutive_hysteresis", &F::consecutive_hysteresis)
          .field("min_loss_scale", &F::min_loss_scale, at_least(1))
          .unsupported("fp16_master_weights_and_grads", false, "fp16 master weights and gradients");
  return s;
}

// Older DeepSpeed configs carry the fp16 loss-scale keys inside "bf16"; DeepSpeed ignored them.
void ignore_bf16_loss_scale_keys(ObjectReader& in, Bf16Config&) {
  for (const char* key : {"loss_scale", "initial_scale_power", "loss_scale_window", "hysteresis",
                          "consecutive_hysteresis", "min_loss_scale"}) {
    const Json* v = in.find(key);
    if (!v) continue;
    if (!v->is_number() && !v->is_boolean() && !ObjectReader::is_auto(*v)) {
      in.ctx().fail(in.path_of(key), str("expected a number, got ", describe(*v)));
    }
    in.ctx().warn(in.path_of(key), "deprecated: bf16 uses no loss scaling; ignored");
  }
}

const Schema<Bf16Config>& bf16_schema() {
  using B = Bf16Config;
  static const Schema<B> s =
      Schema<B>()
          .field("enabled", &B::enabled)
          .field("immediate_grad_update", &B::immediate_grad_update)
          .field("check_grad_overflow", &B::check_grad_overflow)
          .custom(ignore_bf16_loss_scale_keys)
          .unsupported("bf16_master_weights_and_grads", false, "bf16 master weights and gradients")
          .unsupported("bf16_optimizer_states", false, "bf16 optimizer states");
  return s;
}

const Schema<ActivationCheckpointingConfig>& activation_checkpointing_schema() {
  using A = ActivationCheckpointingConfig;
  static const Schema<A> s =
      Schema<A>()
          .field("partition_activations", &A::partition_activations)
          .field("cpu_checkpointing", &A::cpu_checkpointing)
          .field("contiguous_memory_optimization", &A::contiguous_memory_optimization)
          .field("number_checkpoints", &A::number_checkpoints, at_least(1))
          .field("synchronize_checkpoint_boundary", &A::synchronize_checkpoint_boundary)
          .field("profile", &A::profile);
  return s;
}

const Schema<FlopsProfilerConfig>& flops_profiler_schema() {
  using F = FlopsProfilerConfig;
  static const Schema<F> s = Schema<F>()
                                 .field("enabled", &F::enabled)
                                 .field("recompute_fwd_factor", &F::recompute_fwd_factor, at_least(0))
                                 .field("profile_step", &F::profile_step, at_least(1))
                                 .field("module_depth", &F::module_depth, at_least(-1))
                                 .field("top_modules", &F::top_modules, at_least(1))
                                 .field("detailed", &F::detailed)
                                 .field("output_file", &F::output_file);
  return s;
}

const Schema<CommsLoggerConfig>& comms_logger_schema() {
  using C = CommsLoggerConfig;
  static const Schema<C> s = Schema<C>()
                                 .field("enabled", &C::enabled)
                                 .field("verbose", &C::verbose)
                                 .field("prof_all", &C::prof_all)
                                 .field("debug", &C::debug)
                                 .field("prof_ops", &C::prof_ops);
  return s;
}

const Schema<FileMonitorConfig>& file_monitor_schema() {
  using M = FileMonitorConfig;
  static const Schema<M> s = Schema<M>()
                                 .field("enabled", &M::enabled)
                                 .field("output_path", &M::output_path)
                                 .field("job_name", &M::job_name);
  return s;
}

const Schema<WandbConfig>& wandb_schema() {
  using W = WandbConfig;
  static const Schema<W> s = Schema<W>()
                                 .field("enabled", &W::enabled)
                                 .field("group", &W::group)
                                 .field("team", &W::team)
                                 .field("project", &W::project);
  return s;
}

// Monitors deepspeed.cpp has no writer for: accepted, and a warning when enabled.
void warn_log_only(ObjectReader& root, const std::string& key, bool enabled, const std::string& what) {
  if (enabled) {
    root.ctx().warn(join_path(root.path_of(key), "enabled"),
                    str("deepspeed.cpp does not write to ", what, "; metrics go to stdout and csv_monitor"));
  }
}

// comet, trackio: not parsed beyond "enabled".
void read_foreign_monitor(ObjectReader& root, const std::string& key, const std::string& what) {
  ObjectReader in = root.child(key);
  bool enabled = false;
  in.read("enabled", enabled);
  warn_log_only(root, key, enabled, what);  // other keys are not checked: nothing reads them
}

void read_parallel_write(ObjectReader& in, CheckpointConfig& c) {
  ObjectReader pw = in.child("parallel_write");
  pw.read("pipeline_stage", c.parallel_write_pipeline_stage);
  pw.finish();
}

const Schema<CheckpointConfig>& checkpoint_schema() {
  using C = CheckpointConfig;
  static const Schema<C> s =
      Schema<C>()
          .choice("tag_validation", &C::tag_validation,
                  EnumNames<TagValidation>{{"Warn", TagValidation::kWarn},
                                           {"Ignore", TagValidation::kIgnore},
                                           {"Fail", TagValidation::kFail}})
          .field("load_universal", &C::load_universal)
          .field("use_node_local_storage", &C::use_node_local_storage)
          .custom(read_parallel_write,
                  [](const C& c, Json& j) {
                    j["parallel_write"] = {{"pipeline_stage", c.parallel_write_pipeline_stage}};
                  })
          .unsupported("writer", nullptr, "pluggable checkpoint writers (FastPersist)");
  return s;
}

// DeepSpeed's DtypeEnum spellings; the first one of each type is written.
EnumNames<DataType> dtype_names() {
  return {
      {"fp32", DataType::kFp32},     {"fp16", DataType::kFp16},          {"bf16", DataType::kBf16},
      {"float32", DataType::kFp32},  {"float", DataType::kFp32},         {"torch.float32", DataType::kFp32},
      {"float16", DataType::kFp16},  {"half", DataType::kFp16},          {"torch.float16", DataType::kFp16},
      {"bfloat16", DataType::kBf16}, {"torch.bfloat16", DataType::kBf16}};
}

const Schema<DataTypesConfig>& data_types_schema() {
  static const Schema<DataTypesConfig> s = Schema<DataTypesConfig>().optional_choice(
      "grad_accum_dtype", &DataTypesConfig::grad_accum_dtype, dtype_names());
  return s;
}

}  // namespace

void add_misc_sections(Schema<Config>& root) {
  root.object("fp16", &Config::fp16, fp16_schema())
      .object("bf16", &Config::bf16, bf16_schema())
      .object("activation_checkpointing", &Config::activation_checkpointing,
              activation_checkpointing_schema())
      .custom([](ObjectReader& in, Config& c) {
        const Json* v = in.find("activation_checkpointing");
        c.activation_checkpointing.present = v && !v->is_null();
        const ActivationCheckpointingConfig& a = c.activation_checkpointing;
        if (a.contiguous_memory_optimization && !a.number_checkpoints)
          in.ctx().fail("activation_checkpointing.contiguous_memory_optimization",
                        "needs number_checkpoints (the checkpointed calls of one forward: the buffer holds that many)");
      })
      .object("flops_profiler", &Config::flops_profiler, flops_profiler_schema())
      .object("comms_logger", &Config::comms_logger, comms_logger_schema())
      .object("csv_monitor", &Config::csv_monitor, file_monitor_schema())
      .object("tensorboard", &Config::tensorboard, file_monitor_schema())
      .object("wandb", &Config::wandb, wandb_schema())
      .custom([](ObjectReader& in, Config& c) {
        warn_log_only(in, "tensorboard", c.tensorboard.enabled, "TensorBoard");
        warn_log_only(in, "wandb", c.wandb.enabled, "Weights & Biases");
      })
      .custom([](ObjectReader& in, Config&) { read_foreign_monitor(in, "comet", "Comet"); })
      .custom([](ObjectReader& in, Config&) { read_foreign_monitor(in, "trackio", "Trackio"); })
      .object("checkpoint", &Config::checkpoint, checkpoint_schema())
      .object("data_types", &Config::data_types, data_types_schema())
      .optional_choice("communication_data_type", &Config::communication_data_type,
                       EnumNames<DataType>{
                           {"fp32", DataType::kFp32}, {"fp16", DataType::kFp16}, {"bf16", DataType::kBf16}});
}

}  // namespace ds::config_detail
