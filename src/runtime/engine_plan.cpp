#include "ds/runtime/engine_plan.h"

#include "ds/common/error.h"
#include "ds/common/strings.h"
#include "ds/compress/quantize.h"
#include "ds/optim/optimizer.h"

namespace ds {

namespace {

// What the engine cannot honour with these groups is refused here, with the key's path.
void check_supported(const Config& c, const comm::ParallelGroups& g) {
  if (!c.resolved()) throw ConfigError("the engine needs a resolved config: call config.resolve(world_size) first");
  check_config(c);
  if (c.parallel.tensor_parallel_size != g.tensor->size())
    throw ConfigError(ds::str("tensor_parallel.autotp_size is ", c.parallel.tensor_parallel_size,
                              " but the tensor group has ", g.tensor->size(), " ranks: build the groups with "
                              "ds::parallel_groups(world, config)"));
  if (c.parallel.pipeline_stages != g.pipe->size())
    throw ConfigError(ds::str("pipeline.stages is ", c.parallel.pipeline_stages, " but the pipe group has ",
                              g.pipe->size(), " ranks: build the groups with ds::comm::Topology::for_world(world, ",
                              c.parallel.pipeline_stages, ", 1)"));
  if (c.parallel.sequence_parallel_size != g.sequence->size())
    throw ConfigError(ds::str("sequence_parallel_size is ", c.parallel.sequence_parallel_size,
                              " but the sequence group has ", g.sequence->size(), " ranks: build the groups with "
                              "ds::parallel_groups(world, config)"));
  if (c.parallel.zero_group_size() != g.data->size())
    throw ConfigError(ds::str("the config was resolved for ", c.parallel.zero_group_size(),
                              " data-parallel ranks but the data-parallel group has ", g.data->size()));
  check_hpz(c, g.data->size());
}

aio::AioOptions aio_options(const AioConfig& a) {
  aio::AioOptions o;
  o.block_size = size_t(a.block_size);
  o.queue_depth = unsigned(a.queue_depth);
  o.intra_op_parallelism = unsigned(a.intra_op_parallelism);
  o.single_submit = a.single_submit;
  o.overlap_events = a.overlap_events;
  return o;
}

}  // namespace

void check_hpz(const Config& c, int data_ranks) {
  const int64_t hpz = c.zero_optimization.zero_hpz_partition_size;
  if (hpz > 1 && (hpz > data_ranks || data_ranks % hpz != 0))
    throw ConfigError(ds::str("zero_optimization.zero_hpz_partition_size ", hpz, " does not divide the ", data_ranks,
                              " data-parallel ranks; set it to the data-parallel ranks per node (a divisor of ",
                              data_ranks, ")"));
}

int hpz_ranks(const Config& c, int data_ranks) {
  const int64_t h = c.zero_optimization.zero_hpz_partition_size;
  return h > 1 && h < data_ranks ? int(h) : 1;
}

void check_config(const Config& c) {
  if (c.tensor_parallel.tp_overlap_comm)
    throw ConfigError("tensor_parallel.tp_overlap_comm: overlapping the tensor-parallel all-reduces with compute is not "
                      "implemented; set it to false");
  if (c.pipeline.stages > 1) {
    if (c.zero_optimization.stage >= 2)  // Config::resolve refuses it too, naming the key
      throw ConfigError(ds::str("zero_optimization.stage ", c.zero_optimization.stage, " cannot be combined with ",
                                c.pipeline.stages, " pipeline stages (use stage 0 or 1, as in DeepSpeed)"));
    if (c.zero_optimization.offload_optimizer.device != OffloadDevice::kNone ||
        c.zero_optimization.offload_param.device != OffloadDevice::kNone)
      throw ConfigError("zero_optimization offload with pipeline.stages > 1 is not supported yet; remove the offload");
  }
  if (c.pipeline.activation_checkpoint_interval > 0 && c.zero_optimization.stage == 3)
    throw ConfigError("pipeline.activation_checkpoint_interval with ZeRO stage 3 is not supported yet (the recompute "
                      "would need the units gathered again); use stage 0-2 or set it to 0");
  check_offload(c);
  check_zero_plus_plus(c);
  if (c.gradient_clipping < 0) throw ConfigError(ds::str("gradient_clipping must be >= 0, got ", c.gradient_clipping));
  if (c.checkpoint.use_node_local_storage)
    throw ConfigError("checkpoint.use_node_local_storage: the engine saves every rank's part into one shared "
                      "directory (rank 0 checks each file before committing); remove the key");
}

void check_offload(const Config& c) {
  const auto& z = c.zero_optimization;
  if (z.offload_optimizer.device != OffloadDevice::kNone && z.stage == 0)
    throw ConfigError("zero_optimization.offload_optimizer needs ZeRO stage 1, 2 or 3 (as in DeepSpeed)");
  // On a CPU build the states already live in host memory; what cpu offload changes is that the
  // step runs on the CPU kernels, which the engine uses anyway unless torch_adam is set.
  if (z.offload_optimizer.device == OffloadDevice::kCpu && c.optimizer.torch_adam)
    throw ConfigError("zero_optimization.offload_optimizer with optimizer.params.torch_adam: offload runs the CPU "
                      "kernels; remove torch_adam");
  if (z.offload_param.device == OffloadDevice::kNvme && z.stage != 3)
    throw ConfigError(ds::str("zero_optimization.offload_param.device \"nvme\" needs ZeRO stage 3, stage is ", z.stage));
  if (z.offload_param.device == OffloadDevice::kNvme && !c.bf16.enabled && !c.fp16.enabled)
    throw ConfigError("zero_optimization.offload_param.device \"nvme\" needs bf16 or fp16: under fp32 the weight shard "
                      "is the optimizer's master and stays in memory; enable bf16");
}

void check_zero_plus_plus(const Config& c) {
  const auto& z = c.zero_optimization;
  if (z.zero_quantized_weights && z.stage != 3)
    throw ConfigError(ds::str("zero_optimization.zero_quantized_weights needs ZeRO stage 3 (it quantizes stage 3's "
                              "weight gathers), stage is ", z.stage, "; set stage 3 or remove the key"));
  if (z.zero_hpz_partition_size > 1 && z.stage != 3)
    throw ConfigError(ds::str("zero_optimization.zero_hpz_partition_size needs ZeRO stage 3 (it keeps a secondary "
                              "copy of stage 3's weights), stage is ", z.stage, "; set stage 3 or remove the key"));
  if (z.zero_quantized_gradients && z.stage == 0)
    throw ConfigError("zero_optimization.zero_quantized_gradients needs ZeRO stage 1, 2 or 3 (it quantizes their "
                      "gradient reduce-scatter; stage 0 all-reduces)");
  if (z.zero_quantized_gradients && optim::keeps_local_gradients(c.optimizer))
    throw ConfigError(ds::str("zero_optimization.zero_quantized_gradients with optimizer ", optimizer_type_name(c.optimizer.type),
                              ": the 1-bit optimizers compress their own communication; remove one of the two"));
}

EnginePlan plan_engine(const Config& c, const comm::ParallelGroups& groups, std::optional<at::ScalarType> compute,
                       int64_t quantization_group) {
  check_supported(c, groups);
  if (quantization_group < 0)
    throw Error(ds::str("EngineOptions::quantization_group must be >= 0, got ", quantization_group));
  const ZeroConfig& z = c.zero_optimization;
  EnginePlan p;
  p.stage = int(z.stage);
  if (compute) {
    p.compute_reason = "set by the program (EngineOptions::compute_dtype)";
  } else {
    const zero::ComputeChoice choice = zero::choose_compute(c);
    compute = choice.dtype;
    p.compute_reason = choice.reason;
    p.compute_slow = choice.slow;
  }
  p.precision = zero::PrecisionPolicy::from_config(c, compute);
  if (p.precision.grad != at::kFloat && p.precision.grad != p.precision.working)
    throw ConfigError(ds::str("data_types.grad_accum_dtype ", zero::dtype_name(p.precision.grad), ": gradients ",
                              "accumulate in fp32 or in the compute dtype (", zero::dtype_name(p.precision.working), ")"));
  if (p.stage == 0 && c.data_types.grad_accum_dtype && p.precision.grad != p.precision.working)
    throw ConfigError(ds::str("data_types.grad_accum_dtype ", zero::dtype_name(p.precision.grad), " at ZeRO stage 0: ",
                              "gradients accumulate in the ", zero::dtype_name(p.precision.working), " weights' own "
                              "gradient buffers there; use ZeRO stage 1 or more, or remove the key"));
  p.shard = {p.stage, groups.data->size(), groups.data->rank(), p.precision};
  p.shard.local_grads = optim::keeps_local_gradients(c.optimizer);
  p.sync = p.stage == 0 ? zero::GradSync::kAllReduce : zero::GradSync::kReduceScatter;

  if (z.reduce_bucket_size < 1) throw ConfigError(ds::str("reduce_bucket_size must be >= 1, got ", z.reduce_bucket_size));
  p.reduce.every_micro_batch = p.stage >= 3 || (p.stage == 2 && !p.shard.local_grads);
  p.reduce.overlap = p.stage == 0 || z.overlap_comm;  // stage 0 always overlaps
  p.reduce.bucket_elements = z.reduce_bucket_size;
  p.reduce.predivide_factor = c.gradient_predivide_factor;
  p.reduce.comm_dtype = p.precision.reduce;

  p.gather.prefetch_elements = z.stage3_prefetch_bucket_size;
  p.gather.max_live_elements = z.stage3_max_live_parameters;
  p.gather.max_reuse_distance = z.stage3_max_reuse_distance;
  p.gather.persistence_threshold = z.stage3_param_persistence_threshold;
  const int64_t group = quantization_group > 0 ? quantization_group : compress::kZeroPlusPlusGroup;
  if (z.zero_quantized_weights) p.gather.quantize_group = group;
  if (z.zero_quantized_gradients) p.reduce.quantize_group = group;
  p.hpz = hpz_ranks(c, groups.data->size());
  if (p.hpz == 1 && z.zero_hpz_partition_size > 1) {  // all data-parallel ranks (check_hpz refused the rest)
    p.hpz_note = ds::str("zero_optimization.zero_hpz_partition_size ", z.zero_hpz_partition_size, " is all ",
                         groups.data->size(), " data-parallel ranks: a secondary copy would be gathered over the same "
                         "ranks as the shards, so hpZ is off; set it to the ranks per node on several nodes");
  }
  p.allgather_bucket_elements = z.allgather_bucket_size;
  p.gradient_clipping = c.gradient_clipping;

  const int rank = groups.world->rank();
  if (z.offload_optimizer.device == OffloadDevice::kNvme) {
    offload::SwapOptions so;
    so.nvme_path = z.offload_optimizer.nvme_path.value_or("");
    so.rank = rank;
    so.sub_group_size = z.sub_group_size;
    so.buffer_count = z.offload_optimizer.buffer_count;
    so.pin_memory = z.offload_optimizer.pin_memory;
    so.aio = aio_options(c.aio);
    p.swap_optimizer = so;
  }
  if (z.offload_param.device == OffloadDevice::kNvme) {
    offload::ParamSwapOptions po;
    po.nvme_path = z.offload_param.nvme_path.value_or("");
    po.rank = rank;
    po.aio = aio_options(c.aio);
    p.gather.max_reads_ahead = int(std::max<int64_t>(1, z.offload_param.buffer_count));
    p.swap_params = po;
  }
  return p;
}

}  // namespace ds
