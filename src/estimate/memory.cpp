// One rank's memory, part by part (see estimate.h): the model states from the engine's own
// per-unit layout, the rest from what this implementation keeps alive at its peak.
#include <c10/core/ScalarType.h>

#include <algorithm>

#include "ds/common/error.h"
#include "ds/estimate/estimate.h"
#include "internal.h"
#include "ds/models/gpt.h"
#include "ds/offload/optimizer_swapper.h"
#include "ds/optim/optimizer.h"
#include "ds/zero/layout.h"
#include "ds/zero/precision.h"

namespace ds::estimate {

namespace {

int64_t bytes_of(at::ScalarType t) { return int64_t(c10::elementSize(t)); }

}  // namespace

void ModelShape::validate() const {
  auto positive = [](int64_t v, const char* name) {
    if (v < 1) throw ConfigError(ds::str(name, " must be at least 1, got ", v));
  };
  positive(n_layer, "the layers"), positive(d_model, "the width"), positive(n_head, "the heads");
  positive(seq_len, "the context"), positive(vocab_size, "the vocabulary");
  if (d_model % n_head != 0)
    throw ConfigError(ds::str("the heads (", n_head, ") must divide the width (", d_model, ")"));
}

int64_t ModelShape::parameters() const {
  int64_t n = 0;
  for (int64_t u : unit_sizes()) n += u;
  return n;
}

std::vector<int64_t> ModelShape::unit_sizes() const {
  std::vector<int64_t> units = {vocab_size * d_model, seq_len * d_model};
  for (int64_t l = 0; l < n_layer; ++l) units.push_back(12 * d_model * d_model + 13 * d_model);
  units.push_back(2 * d_model);
  return units;
}

ModelShape ModelShape::from_parameters(int64_t parameters, int64_t n_layer, int64_t d_model, int64_t n_head,
                                       int64_t seq_len) {
  ModelShape s;
  s.n_layer = n_layer, s.d_model = d_model, s.n_head = n_head, s.seq_len = seq_len, s.vocab_size = 1;
  s.validate();
  const int64_t rest = parameters - (s.parameters() - d_model);
  if (rest < d_model)
    throw ConfigError(ds::str(n_layer, " blocks of width ", d_model, " and context ", seq_len, " already hold ",
                              s.parameters() - d_model, " parameters, more than the ", parameters,
                              " given: give fewer layers or a smaller width"));
  s.vocab_size = rest / d_model;
  return s;
}

double ModelShape::flops_per_token(int64_t context) const {
  return 6.0 * double(parameters()) + 12.0 * double(n_layer) * double(context) * double(d_model);
}

double ModelShape::block_forward_flops_per_token(int64_t context) const {
  const double d = double(d_model);
  return double(n_layer) * (2.0 * (12 * d * d + 13 * d) + 4.0 * double(context) * d);
}

Memory estimate_memory(const Config& config, const ModelShape& shape, const Layout& layout, const Rates& rates,
                       const zero::PrecisionPolicy& precision) {
  const ZeroConfig& z = config.zero_optimization;
  const int stage = int(z.stage);
  const int dp = layout.world();
  zero::ShardPlan plan;
  plan.stage = stage, plan.dp_size = dp, plan.dp_rank = 0, plan.precision = precision;
  const bool swap_optimizer = z.offload_optimizer.device == OffloadDevice::kNvme;
  const bool swap_params = stage == 3 && z.offload_param.device == OffloadDevice::kNvme;
  size_t states = 0;
  for (const optim::StateSpec& s : optim::make_optimizer(config.optimizer)->state_specs())
    states += s.kind == optim::StateSpec::Kind::kElementwise ? 1 : 0;
  const int64_t w = bytes_of(precision.working);

  Memory m;
  std::vector<int64_t> own_lengths;
  int64_t largest_unit = 0, persistent = 0, total = 0, own_total = 0;
  for (int64_t numel : shape.unit_sizes()) {
    const zero::UnitLayout l = zero::plan_unit(numel, plan);
    own_lengths.push_back(l.own.length);
    largest_unit = std::max(largest_unit, l.padded_numel);
    total += l.padded_numel, own_total += l.own.length;
    if (l.shard_params) {
      const int64_t shard = l.own.length * bytes_of(precision.param);
      (swap_params ? m.on_disk : m.params) += shard;
      if (numel <= z.stage3_param_persistence_threshold) persistent += l.padded_numel * w;
    } else {
      m.params += l.padded_numel * w;
    }
    if (l.persistent_grads) m.grads += l.padded_numel * w;
    if (l.grad_shard) m.grads += l.own.length * bytes_of(precision.grad);
    if (swap_optimizer) continue;
    if (!l.master_is_weights) m.masters += l.own.length * 4;
    m.optimizer_states += int64_t(states) * l.own.length * 4;
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
  if (stage >= 2) {
    const int64_t waiting = z.overlap_comm ? std::min(total, largest_unit + z.reduce_bucket_size) : total;
    m.in_flight = waiting * w + own_total * c;
  } else if (stage == 0 && precision.reduce != precision.working) {
    m.in_flight = std::min(total, z.reduce_bucket_size) * c;
  }

  m.activations_without_checkpointing = activation_bytes(shape, layout, config, precision, false);
  m.activations_with_checkpointing = activation_bytes(shape, layout, config, precision, true);
  m.activations = layout.checkpoint_blocks ? m.activations_with_checkpointing : m.activations_without_checkpointing;
  m.runtime = rates.runtime_bytes;
  return m;
}

// The reference GPT's own activation model (GptConfig::activation_bytes), every block
// checkpointed or none.
int64_t activation_bytes(const ModelShape& s, const Layout& layout, const Config& config,
                         const zero::PrecisionPolicy& precision, bool checkpointed) {
  GptConfig g;
  g.n_layer = s.n_layer, g.d_model = s.d_model, g.n_head = s.n_head, g.seq_len = s.seq_len, g.vocab_size = s.vocab_size;
  g.checkpoint_blocks = checkpointed ? s.n_layer : 0;
  return int64_t(g.activation_bytes(config.train_micro_batch_size_per_gpu, layout.context,
                                    int64_t(c10::elementSize(precision.working))));
}

}  // namespace ds::estimate
