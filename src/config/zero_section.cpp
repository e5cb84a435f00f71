// The "zero_optimization" section (with its offload sub-sections and deprecated spellings) and "aio".
#include "ds/common/error.h"
#include "sections.h"

namespace ds {

const char* offload_device_name(OffloadDevice device) {
  switch (device) {
    case OffloadDevice::kNone:
      return "none";
    case OffloadDevice::kCpu:
      return "cpu";
    case OffloadDevice::kNvme:
      return "nvme";
  }
  return "none";
}

}  // namespace ds

namespace ds::config_detail {

namespace {

using Z = ZeroConfig;
using OP = OffloadParamConfig;
using OO = OffloadOptimizerConfig;

EnumNames<OffloadDevice> device_names() {
  return {{"none", OffloadDevice::kNone}, {"cpu", OffloadDevice::kCpu}, {"nvme", OffloadDevice::kNvme}};
}

const Schema<OP>& offload_param_schema() {
  static const Schema<OP> s = Schema<OP>()
                                  .choice("device", &OP::device, device_names())
                                  .field("nvme_path", &OP::nvme_path)
                                  .field("buffer_count", &OP::buffer_count, at_least(0))
                                  .field("buffer_size", &OP::buffer_size, at_least(0))
                                  .field("max_in_cpu", &OP::max_in_cpu, at_least(0))
                                  .field("pin_memory", &OP::pin_memory);
  return s;
}

const Schema<OO>& offload_optimizer_schema() {
  static const Schema<OO> s = Schema<OO>()
                                  .choice("device", &OO::device, device_names())
                                  .field("nvme_path", &OO::nvme_path)
                                  .field("buffer_count", &OO::buffer_count, at_least(0))
                                  .field("pin_memory", &OO::pin_memory)
                                  .field("pipeline_read", &OO::pipeline_read)
                                  .field("pipeline_write", &OO::pipeline_write)
                                  .field("fast_init", &OO::fast_init)
                                  .field("ratio", &OO::ratio, between(0, 1))
                                  .unsupported("super_offload", false, "SuperOffload (superchip CPU offload)")
                                  .ignored("convert_grad_on_cpu", true, "gradients are already on the CPU")
                                  .ignored("cpuadam_cores_perc", 0.8, "used with super_offload only");
  return s;
}

// cpu_offload / cpu_offload_param(s) / cpu_offload_use_pin_memory: DeepSpeed's older spellings of the
// offload sub-sections. Mapped the way DeepSpeed maps them (true -> device "cpu"), with a warning.
void map_deprecated_offload(ObjectReader& in, Z&) {
  const std::string kPin = "cpu_offload_use_pin_memory";
  bool pin = false;
  bool pin_given = false;
  if (const Json* v = in.find(kPin)) {
    read_value(*v, in.path_of(kPin), in.ctx(), {}, pin);
    pin_given = true;
  }
  const std::pair<const char*, const char*> mapping[] = {{"cpu_offload", "offload_optimizer"},
                                                         {"cpu_offload_param", "offload_param"},
                                                         {"cpu_offload_params", "offload_param"}};
  std::string mapped;
  for (const auto& [old_key, new_key] : mapping) {
    const Json* v = in.find(old_key);
    if (!v) continue;
    std::string path = in.path_of(old_key);
    bool on = false;
    read_value(*v, path, in.ctx(), {}, on);
    if (in.has(new_key)) {
      in.ctx().fail(path, str("deprecated, and cannot be combined with ", quote(new_key), "; give only ",
                              quote(new_key)));
    }
    if (on) {
      Json section = {{"device", "cpu"}};
      if (pin) section["pin_memory"] = true;
      in.set(new_key, section);
      mapped += str(mapped.empty() ? "" : ", ", new_key);
    }
    in.ctx().warn(path, str("deprecated, use ", quote(new_key), " instead",
                            on ? str(" (mapped to ", new_key, ".device \"cpu\")") : " (false: no offload)"));
  }
  if (pin_given) {
    in.ctx().warn(
        in.path_of(kPin),
        str("deprecated, use offload_optimizer.pin_memory / offload_param.pin_memory instead",
            mapped.empty() || !pin ? " (no effect here)" : str(" (mapped to pin_memory of ", mapped, ")")));
  }
}

// Not given: true for stage 3, false otherwise (DeepSpeed's overlap_comm_valid validator).
void read_overlap_comm(ObjectReader& in, Z& z) {
  const Json* v = in.find("overlap_comm");
  if (v && !ObjectReader::is_auto(*v) && !v->is_null()) {
    read_value(*v, in.path_of("overlap_comm"), in.ctx(), {}, z.overlap_comm);
    return;
  }
  z.overlap_comm = z.stage == 3;
  if (v && ObjectReader::is_auto(*v))
    in.ctx().note_auto(in.path_of("overlap_comm"), z.overlap_comm ? "true" : "false");
}

void check_offload(ObjectReader& in, Z& z) {
  const OP& param = z.offload_param;
  const OO& optim = z.offload_optimizer;
  if (param.nvme_path && param.nvme_path->empty())
    in.ctx().fail(join_path(in.path_of("offload_param"), "nvme_path"), "is empty; give the directory to swap to");
  if (optim.nvme_path && optim.nvme_path->empty())
    in.ctx().fail(join_path(in.path_of("offload_optimizer"), "nvme_path"), "is empty; give the directory to swap to");
  if (param.device == OffloadDevice::kNvme && !param.nvme_path) {
    in.ctx().fail(join_path(in.path_of("offload_param"), "nvme_path"), "required when device is \"nvme\"");
  }
  if (optim.device == OffloadDevice::kNvme && !optim.nvme_path) {
    in.ctx().fail(join_path(in.path_of("offload_optimizer"), "nvme_path"),
                  "required when device is \"nvme\"");
  }
  if (optim.ratio < 1.0 && z.stage != 3) {
    in.ctx().fail(
        join_path(in.path_of("offload_optimizer"), "ratio"),
        str("partial offload (", format_number(optim.ratio), " < 1) needs ZeRO stage 3, stage is ", z.stage));
  }
  if (param.device != OffloadDevice::kNone && z.stage != 3) {
    in.ctx().warn(in.path_of("offload_param"),
                  str("parameter offload needs ZeRO stage 3, stage is ", z.stage, "; ignored"));
  }
  if (optim.device != OffloadDevice::kNone && z.stage == 0) {
    in.ctx().warn(in.path_of("offload_optimizer"),
                  "optimizer offload needs ZeRO stage 1, 2 or 3, stage is 0; ignored");
  }
}

const Schema<Z>& zero_schema() {
  static const Schema<Z> s =
      Schema<Z>()
          .custom(map_deprecated_offload)
          .alias("prefetch_bucket_size", "stage3_prefetch_bucket_size", false)
          .alias("param_persistence_threshold", "stage3_param_persistence_threshold", false)
          .alias("model_persistence_threshold", "stage3_model_persistence_threshold", false)
          .alias("max_live_parameters", "stage3_max_live_parameters", false)
          .alias("max_reuse_distance", "stage3_max_reuse_distance", false)
          .alias("gather_16bit_weights_on_model_save", "stage3_gather_16bit_weights_on_model_save", false)
          .alias("stage3_gather_fp16_weights_on_model_save", "stage3_gather_16bit_weights_on_model_save",
                 true)
          .field("stage", &Z::stage, between(0, 3))
          .field("contiguous_gradients", &Z::contiguous_gradients)
          .field("reduce_scatter", &Z::reduce_scatter)
          .field("reduce_bucket_size", &Z::reduce_bucket_size, at_least(1))
          .field("allgather_partitions", &Z::allgather_partitions)
          .field("allgather_bucket_size", &Z::allgather_bucket_size, at_least(1))
          .custom(read_overlap_comm, [](const Z& z, Json& j) { j["overlap_comm"] = z.overlap_comm; })
          .field("load_from_fp32_weights", &Z::load_from_fp32_weights)
          .field("elastic_checkpoint", &Z::elastic_checkpoint)
          .field("ignore_unused_parameters", &Z::ignore_unused_parameters)
          .field("round_robin_gradients", &Z::round_robin_gradients)
          .object("offload_param", &Z::offload_param, offload_param_schema())
          .object("offload_optimizer", &Z::offload_optimizer, offload_optimizer_schema())
          .field("sub_group_size", &Z::sub_group_size, at_least(1))
          .field("stage3_prefetch_bucket_size", &Z::stage3_prefetch_bucket_size, at_least(0))
          .field("stage3_param_persistence_threshold", &Z::stage3_param_persistence_threshold, at_least(0))
          .field("stage3_model_persistence_threshold", &Z::stage3_model_persistence_threshold, at_least(0))
          .field("stage3_max_live_parameters", &Z::stage3_max_live_parameters, at_least(0))
          .field("stage3_max_reuse_distance", &Z::stage3_max_reuse_distance, at_least(0))
          .field("stage3_gather_16bit_weights_on_model_save", &Z::stage3_gather_16bit_weights_on_model_save)
          .custom(check_offload)
          .ignored("use_multi_rank_bucket_allreduce", true, "a GPU bucketing choice")
          .ignored("memory_efficient_linear", true, "a PyTorch module patch")
          .ignored("override_module_apply", true, "a PyTorch module patch")
          .ignored("log_trace_cache_warnings", false)
          .ignored("enable_sanity_checks", false)
          .ignored("pipeline_loading_checkpoint", false)
          .ignored("mics_hierarchical_params_gather", false)
          .ignored("stage3_module_granularity_threshold", 0, "units are explicit here")
          .ignored("stage3_use_all_reduce_for_fetch_params", false)
          .ignored("stage3_allgather_sequential", false)
          .field("zero_hpz_partition_size", &Z::zero_hpz_partition_size, at_least(1))
          .field("zero_quantized_weights", &Z::zero_quantized_weights)
          .field("zero_quantized_gradients", &Z::zero_quantized_gradients)
          .unsupported("zero_quantized_nontrainable_weights", false,
                       "ZeRO++ quantized non-trainable weights (the engine trains every parameter it holds)")
          .unsupported("zeropp_loco_param", nullptr, "LoCo-ZeRO++")
          .unsupported("mics_shard_size", -1, "MiCS sharding")
          .unsupported("zenflow", nullptr, "ZenFlow")
          .unsupported("legacy_stage1", false, "the legacy ZeRO stage 1 (DeepSpeed dropped it too)");
  return s;
}

// Also accepts DeepSpeed's oldest form, "zero_optimization": true|false (+ top-level "allgather_size").
void read_zero(ObjectReader& root, Config& c) {
  const Json* v = root.find("zero_optimization");
  if (v && v->is_boolean()) {
    Z z;
    z.stage = v->get<bool>() ? 1 : 0;
    if (const Json* size = root.find("allgather_size"); size && z.stage == 1) {
      read_value(*size, root.path_of("allgather_size"), root.ctx(), at_least(0), z.allgather_bucket_size);
    }
    root.ctx().warn(
        root.path_of("zero_optimization"),
        str("deprecated boolean form, use {\"stage\": N} instead (mapped to stage ", z.stage, ")"));
    c.zero_optimization = z;
    return;
  }
  ObjectReader in = root.child("zero_optimization");
  zero_schema().read(in, c.zero_optimization);
  in.finish();
}

const Schema<AioConfig>& aio_schema() {
  using A = AioConfig;
  static const Schema<A> s = Schema<A>()
                                 .alias("thread_count", "intra_op_parallelism", true)
                                 .field("block_size", &A::block_size, at_least(1))
                                 .field("queue_depth", &A::queue_depth, at_least(1))
                                 .field("intra_op_parallelism", &A::intra_op_parallelism, at_least(1))
                                 .field("single_submit", &A::single_submit)
                                 .field("overlap_events", &A::overlap_events)
                                 .unsupported("use_gds", false, "GPUDirect Storage (CUDA only)");
  return s;
}

}  // namespace

void add_zero_sections(Schema<Config>& root) {
  root.custom(read_zero, [](const Config& c,
                            Json& j) { j["zero_optimization"] = zero_schema().write(c.zero_optimization); })
      .object("aio", &Config::aio, aio_schema());
}

}  // namespace ds::config_detail
