// One rank's memory, part by part (see estimate.h): the model states from the engine's own
// per-unit layout, the rest from what this implementation keeps alive at its peak.
#include <c10/core/ScalarType.h>

#include <algorithm>

#include "ds/common/error.h"
#include "ds/estimate/estimate.h"
#include "internal.h"
#include "ds/runtime/engine_plan.h"
#include "ds/models/gpt.h"
#include "ds/offload/optimizer_swapper.h"
#include "ds/optim/optimizer.h"
#include "ds/zero/layout.h"
#include "ds/zero/precision.h"

namespace ds::estimate {

namespace {

int64_t bytes_of(at::ScalarType t) { return int64_t(c10::elementSize(t)); }

}  // namespace

// The ranks of one pipeline stage: its units' model states at the data-parallel size, and
// the activations of the micro-batches it keeps in flight.
Memory stage_memory(const Config& config, const ModelShape& shape, const Layout& layout, const Rates& rates,
                    const zero::PrecisionPolicy& precision, const StageShare& share,
                    const optim::FlatOptimizer& optimizer) {
  const ZeroConfig& z = config.zero_optimization;
  const int stage = int(z.stage);
  const int dp = parallel_sizes(config, layout).data;
  const int hpz = hpz_ranks(config, dp);
  zero::ShardPlan plan;
  plan.stage = stage, plan.dp_size = dp, plan.dp_rank = 0, plan.precision = precision;
  plan.local_grads = optim::keeps_local_gradients(config.optimizer);  // ZeRO-2 keeps full gradients then
  const bool swap_optimizer = z.offload_optimizer.device == OffloadDevice::kNvme;
  const bool swap_params = stage == 3 && z.offload_param.device == OffloadDevice::kNvme;
  size_t states = 0;
  for (const optim::StateSpec& s : optimizer.state_specs())
    states += s.kind == optim::StateSpec::Kind::kElementwise ? 1 : 0;
  const int64_t w = bytes_of(precision.working);

  Memory m;
  std::vector<int64_t> own_lengths;
  int64_t largest_unit = 0, persistent = 0, total = 0, own_total = 0;
  for (int64_t numel : share.units) {
    const zero::UnitLayout l = zero::plan_unit(numel, plan);
    own_lengths.push_back(l.own.length);
    largest_unit = std::max(largest_unit, l.padded_numel);
    total += l.padded_numel, own_total += l.own.length;
    if (l.shard_params) {
      const int64_t shard = l.own.length * bytes_of(precision.param);
      (swap_params ? m.on_disk : m.params) += shard;
      if (numel <= z.stage3_param_persistence_threshold) persistent += l.padded_numel * w;
      else if (hpz > 1)  // hpZ: this rank's chunk over its node's ranks
        m.params += l.padded_numel / hpz * bytes_of(precision.param);
    } else {
      m.params += l.padded_numel * w;
    }
    if (l.persistent_grads) m.grads += l.padded_numel * w;
    if (l.grad_shard) m.grads += l.own.length * bytes_of(precision.grad);
    if (swap_optimizer) continue;
    if (!l.master_is_weights) m.masters += l.own.length * 4;
    m.optimizer_states += int64_t(states) * l.own.length * 4 + optimizer.held_bytes_of_unit(numel, l.padded_numel, l.own.length, dp);
  }
  if (swap_optimizer) {  // states (and a separate master) on disk; buffers of the largest sub-group in RAM
    const size_t tensors = states + (precision.master_is_working() ? 0 : 1);
    m.on_disk += int64_t(offload::OptimizerSwapper::bytes_needed(own_lengths, tensors, z.sub_group_size));
    const int64_t group = std::min(own_total, std::max<int64_t>(1, z.sub_group_size));
    const int64_t aligned = (group * 4 + 4095) / 4096 * 4096;
    m.optimizer_states += std::max<int64_t>(3, z.offload_optimizer.buffer_count) * aligned * int64_t(tensors);
  }
  if (swap_params) m.io_buffers += 2 * largest_unit / dp * bytes_of(precision.param);  // reads ahead of gathers

  // Stage 3: the persistent units stay gathered, and the unit in use with what the prefetch
  // bucket holds ahead of it (stage3_prefetch_bucket_size elements, at most
  // stage3_max_live_parameters). Stages 2-3: the backward's gradients wait for their
  // reduce-scatter until reduce_bucket_size elements are on the wire (with overlap_comm off,
  // until the backward ends), beside the received chunks. Stage 0 converts gradients for the
  // wire in buckets when the communication dtype differs.
  const int64_t c = bytes_of(precision.reduce);
  if (stage == 3) {
    m.persistent = persistent;
    const int64_t ahead = std::min<int64_t>(z.stage3_prefetch_bucket_size, z.stage3_max_live_parameters);
    m.gathered = std::min(total, largest_unit + ahead) * w;
  }
  if (stage >= 2 && !plan.local_grads) {  // (a 1-bit optimizer's ZeRO-2 keeps full gradient buffers)
    const int64_t waiting = z.overlap_comm ? std::min(total, largest_unit + z.reduce_bucket_size) : total;
    // qgZ: a waiting unit's gradients are freed once quantized; its int8 blocks sent and received stay.
    m.in_flight = z.zero_quantized_gradients && dp > 1 ? largest_unit * w + waiting * 2 : waiting * w + own_total * c;
  } else if (stage == 0 && precision.reduce != precision.working) {
    m.in_flight = std::min(total, z.reduce_bucket_size) * c;
  }

  m.activations_without_checkpointing = activation_bytes(shape, layout, config, precision, false, share);
  m.activations_with_checkpointing = activation_bytes(shape, layout, config, precision, true, share);
  m.activations = checkpointed(config, layout) ? m.activations_with_checkpointing : m.activations_without_checkpointing;
  m.runtime = rates.runtime_bytes;
  m.stage = share.stage;
  m.stages = parallel_sizes(config, layout).pipeline;
  return m;
}

std::vector<Memory> estimate_memory(const Config& config, const ModelShape& shape, const Layout& layout,
                                    const Rates& rates, const zero::PrecisionPolicy& precision,
                                    const optim::FlatOptimizer& optimizer) {
  std::vector<Memory> out;
  for (const StageShare& share : stage_shares(config, shape, layout))
    out.push_back(stage_memory(config, shape, layout, rates, precision, share, optimizer));
  return out;
}

ParallelSizes parallel_sizes(const Config& config, const Layout& layout) {
  ParallelSizes p;
  p.pipeline = int(std::max<int64_t>(1, config.pipeline.stages));
  p.tensor = int(std::max<int64_t>(1, config.tensor_parallel.autotp_size));
  p.sequence = int(std::max<int64_t>(1, config.sequence_parallel_size));
  if (layout.world() % p.model_ranks() != 0)
    throw ConfigError(ds::str(layout.world(), " ranks are not divisible by pipeline stages ", p.pipeline,
                              " x tensor-parallel size ", p.tensor,
                              p.sequence > 1 ? ds::str(" x sequence_parallel_size ", p.sequence) : std::string()));
  p.data = layout.world() / (p.pipeline * p.tensor);
  return p;
}

bool checkpointed(const Config& config, const Layout& layout) {
  return layout.checkpoint_blocks || (config.pipeline.stages > 1 && config.pipeline.activation_checkpoint_interval > 0);
}

std::vector<StageShare> stage_shares(const Config& config, const ModelShape& shape, const Layout& layout) {
  const ParallelSizes p = parallel_sizes(config, layout);
  return shape.stage_shares(p.pipeline, p.tensor, config.pipeline.partition, layout.context);
}

// The reference GPT's own activation model (GptConfig::activation_bytes) for one stage's
// ranks: its blocks, every one checkpointed or none, kept for the micro-batches 1F1B has in
// flight there (stage s of p: p - s, at most the accumulation steps).
int64_t activation_bytes(const ModelShape& s, const Layout& layout, const Config& config,
                         const zero::PrecisionPolicy& precision, bool checkpointed, const StageShare& share) {
  const ParallelSizes p = parallel_sizes(config, layout);
  GptConfig g;
  g.n_layer = s.n_layer, g.d_model = s.d_model, g.n_head = s.n_head, g.seq_len = s.seq_len, g.vocab_size = s.vocab_size;
  g.checkpoint_blocks = checkpointed ? s.n_layer : 0;
  GptConfig::RankShare r;
  r.blocks = share.blocks, r.tensor = p.tensor, r.head = share.last;
  r.in_flight = std::min<int64_t>(p.pipeline - share.stage, config.gradient_accumulation_steps);
  // Ulysses: a rank holds the activations of its 1/s of the tokens, and attention's of every
  // token for 1/s of the heads: 1/s of the whole either way.
  return int64_t(g.activation_bytes(config.train_micro_batch_size_per_gpu, layout.context,
                                    int64_t(c10::elementSize(precision.working)), r) /
                 double(p.sequence));
}

}  // namespace ds::estimate
