// The step-time model, the table of every ZeRO/offload choice, the advice when nothing fits
// and the scaling table (see estimate.h).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <sstream>

#include <nlohmann/json.hpp>

#include "ds/common/error.h"
#include "ds/compress/quantize.h"
#include "ds/common/strings.h"
#include "ds/estimate/estimate.h"
#include "internal.h"
#include "ds/optim/optimizer.h"
#include "ds/runtime/engine_plan.h"
#include "ds/zero/layout.h"

namespace ds::estimate {

Rates Rates::defaults() { return Rates{}; }

std::string Rates::describe() const {
  return ds::str(source, ": GEMM ", std::lround(gemm_flops / 1e9), " GFLOP/s on ", cores, " cores, model at ",
                 std::lround(model_efficiency * 100), "% of it",
                 tensor_size > 1 ? ds::str(" (a tensor slice of ", tensor_size, " at ", std::lround(tensor_efficiency * 100),
                                           "% of the whole's rate)")
                                 : std::string(),
                 ", memory ", ds::format_bytes(memory_bytes_per_s), "/s, 1-bit ", std::lround(onebit_values_per_s / 1e6),
                 " M values/s, int8 ", std::lround(quantize_values_per_s / 1e6), "/", std::lround(dequantize_values_per_s / 1e6),
                 "/", std::lround(accumulate_values_per_s / 1e6),
                 " M values/s (quantize/dequantize/accumulate) a thread, loopback ", ds::format_bytes(loopback_bytes_per_s), "/s (latency ", std::lround(latency_s * 1e6),
                 " us a step), link ",
                 ds::format_bytes(link_bytes_per_s), "/s (latency ", std::lround(link_latency_s * 1e6), " us), disk read ", ds::format_bytes(disk_read_bytes_per_s),
                 "/s write ", ds::format_bytes(disk_write_bytes_per_s), "/s, runtime ",
                 ds::format_bytes(double(runtime_bytes)), " per rank, RAM ", ds::format_bytes(double(node_memory_bytes)),
                 " per node");
}

StepTime estimate_time(const Config& config, const ModelShape& shape, const Layout& layout, const Rates& rates,
                       const zero::PrecisionPolicy& precision, const Memory& memory,
                       const optim::FlatOptimizer& optimizer) {
  const ZeroConfig& z = config.zero_optimization;
  const ParallelSizes sizes = parallel_sizes(config, layout);
  const int stage = int(z.stage), n = sizes.data, per_node = layout.ranks_per_node;
  const double gas = double(config.gradient_accumulation_steps);
  // A rank's tokens of one micro-batch (its slice of each sequence under Ulysses).
  const double micro_tokens = double(config.train_micro_batch_size_per_gpu) * double(layout.context) / sizes.sequence;
  // Compute: the ranks of a node share its cores.
  const double rank_flops = rates.gemm_flops * rates.model_efficiency / per_node;
  // The tensor group is inside a node (a ring runs at its slowest edge; ranks of one node share
  // its cores for the copies); with several nodes the data group and the sends between
  // pipeline stages cross the link between them.
  const double node_bandwidth = rates.loopback_bytes_per_s * std::min(1.0, 2.0 / double(per_node));
  const double data_bandwidth = layout.nodes > 1 ? std::min(node_bandwidth, rates.link_bytes_per_s) : node_bandwidth;
  const double link_latency = layout.nodes > 1 ? rates.link_latency_s : rates.latency_s;
  // The single-threaded compression loops of a rank: its share of a core (more ranks than
  // cores share them) and at most its share of the node's memory bandwidth for the bytes a
  // value moves.
  const double thread_share = std::min(1.0, double(rates.cores) / double(per_node));
  auto loop_rate = [&](double values_per_s, double bytes_per_value) {
    return std::min(values_per_s * thread_share, rates.memory_bytes_per_s / per_node / bytes_per_value);
  };
  auto all_reduce_s = [&](double bytes, int ranks, double bandwidth) {
    return ranks > 1 ? 2.0 * (ranks - 1) / ranks * bytes / bandwidth + 2.0 * (ranks - 1) * rates.latency_s : 0.0;
  };
  const double activation = micro_tokens * double(shape.d_model) * double(c10::elementSize(precision.working));

  size_t states = 0;
  for (const optim::StateSpec& s : optimizer.state_specs())
    states += s.kind == optim::StateSpec::Kind::kElementwise ? 1 : 0;
  // The optimizer reads and writes the master and each state and reads the gradient. Each
  // further pass reads the states and w again and writes w, which only the last pass writes:
  // 1 + states more (Lamb: 40 bytes per parameter against Adam's 28).
  const double accesses = 3.0 + 2.0 * double(states) + double(optimizer.passes() - 1) * (1.0 + double(states));
  zero::ShardPlan plan;
  plan.stage = stage, plan.dp_size = n, plan.precision = precision;

  StepTime t;
  double compute_mb = 0, micro_batch_s = 0, own_most = 0;  // the slowest stage's
  for (const StageShare& share : stage_shares(config, shape, layout)) {
    // One micro-batch through this stage: its layers' FLOPs over the tensor group, the tensor
    // group's all-reduces (two in each block's forward and two in its backward, the vocabulary-
    // parallel embedding's and head's), and the activations and their gradients to and from
    // the neighbouring stages.
    double flops = share.flops_per_token * micro_tokens;
    if (checkpointed(config, layout))
      flops += double(share.blocks) / double(shape.n_layer) * shape.block_forward_flops_per_token(layout.context) * micro_tokens;
    // A slice's rate as measured for this tensor size (else the whole model's: a lower bound).
    const double slice = sizes.tensor > 1 && rates.tensor_size == sizes.tensor ? rates.tensor_efficiency : 1.0;
    const double compute = flops / sizes.tensor / (rank_flops * slice);
    double comm = 0;
    if (sizes.sequence > 1) {
      // Ulysses: each block exchanges q, k, v (3 activations) and attention's output forward,
      // and their gradients backward, all-to-all over the sequence group (inside a node while
      // tensor x sequence ranks fit one); (s - 1)/s of each leaves the rank. And the loss's
      // count, one scalar all-reduce.
      const int s = sizes.sequence;
      const bool inside = sizes.tensor * s <= per_node;
      const double bandwidth = inside ? node_bandwidth : data_bandwidth;
      const double latency = inside ? rates.latency_s : link_latency;
      // Forward and backward, and the forward again where blocks are recomputed.
      const double exchanges = (checkpointed(config, layout) ? 3.0 : 2.0) * double(share.blocks);
      comm += exchanges * ((s - 1.0) / s * 4.0 * activation / sizes.tensor / bandwidth + 2.0 * (s - 1) * latency) +
              (share.last ? all_reduce_s(0, s, bandwidth) : 0.0);
    }
    if (sizes.tensor > 1) {
      const double big = 4.0 * double(share.blocks) + (share.first ? 1 : 0) + (share.last ? 1 : 0);
      comm += big * all_reduce_s(activation, sizes.tensor, node_bandwidth) +
              (share.last ? 2.0 * all_reduce_s(0, sizes.tensor, node_bandwidth) : 0.0);  // the loss's max and sum
    }
    if (sizes.pipeline > 1) {  // split over the tensor group (pipe_partitioned): 1/t each, then an all-gather
      auto transfer = [&](bool split) {
        const double t = split ? double(sizes.tensor) : 1.0;
        const double gather = t > 1 ? (t - 1) / t * activation / node_bandwidth + (t - 1) * rates.latency_s : 0.0;
        return activation / t / data_bandwidth + link_latency + gather;
      };
      const double hops = (share.first ? 0 : 1) + (share.last ? 0 : 1);  // neighbours: activation and gradient each
      comm += hops * (transfer(config.pipeline.pipe_partitioned) + transfer(config.pipeline.grad_partitioned));
    }
    compute_mb = std::max(compute_mb, compute);
    micro_batch_s = std::max(micro_batch_s, compute + comm);

    double own = 0, padded = 0;
    for (int64_t numel : share.units) {
      const zero::UnitLayout l = zero::plan_unit(numel, plan);
      own += double(l.own.length), padded += double(l.padded_numel);
    }
    own_most = std::max(own_most, own);
    t.optimizer_s = std::max(t.optimizer_s, own * 4.0 * accesses / (rates.memory_bytes_per_s / per_node));

    // The data group's gradient reduction: ring collectives move (n-1)/n of the buffer per
    // rank and direction.
    if (n > 1) {
      const double share_of = double(n - 1) / double(n);
      const double g = padded * double(c10::elementSize(precision.reduce));
      const double p = padded * double(c10::elementSize(precision.param));
      double bytes = 0, collectives = 0, comm_local = 0;
      const double units = double(share.units.size());
      if (optimizer.sends_compressed_momentum()) {
        // The compressed phase (1-bit Adam, Lamb): no gradient crosses; each unit's momentum
        // goes as sign bits, all-to-all to the chunk's server and all-gathered back (the
        // scales are a few bytes), then ZeRO 1-2 all-gather the updated weight shards. The
        // passes over the whole unit are the optimizer's: the momentum's update and mask (~16
        // bytes per element at the memory rate) and the all-reduce's own loops (the worker's
        // error and sign packing, the server's sums, the unpacking), at their calibrated rate.
        bytes = 2 * share_of * padded / 8.0 + (stage >= 1 ? share_of * p : 0.0);
        collectives = units * (4 + (stage >= 1 ? 1 : 0));
        t.optimizer_s = std::max(t.optimizer_s, own * 4.0 * accesses / (rates.memory_bytes_per_s / per_node) +
                                                    padded * 16.0 / (rates.memory_bytes_per_s / per_node) +
                                                    padded / loop_rate(rates.onebit_values_per_s, 12.0));
      } else {
        // ZeRO++: int8 blocks (a byte per value and a 4-byte scale per group) for the
        // gradients' reduce-scatter (qgZ) and stage 3's gathers over the data group (qwZ); with
        // hpZ only a unit's first gather of a step crosses the data group, the others (the
        // backward's, later micro-batches') run inside the node over the secondary group.
        const double int8 = padded * (1.0 + 4.0 / double(compress::kZeroPlusPlusGroup));
        const double gr = z.zero_quantized_gradients ? int8 : g, pg = z.zero_quantized_weights ? int8 : p;
        const double quantize = loop_rate(rates.quantize_values_per_s, 5.0),
                     dequantize = loop_rate(rates.dequantize_values_per_s, 5.0),
                     accumulate = loop_rate(rates.accumulate_values_per_s, 9.0);
        switch (stage) {
          case 0: bytes = 2 * share_of * g, collectives = std::ceil(padded / double(std::max<int64_t>(1, z.reduce_bucket_size))); break;
          case 1: bytes = share_of * (gr + p), collectives = 2 * units; break;
          case 2: bytes = share_of * (gas * gr + p), collectives = units * (gas + 1); break;
          default: {
            // (all n ranks: the engine turns hpZ off; a group wider than a node crosses the link)
            const int hpz = hpz_ranks(config, n);
            const bool inside = hpz * sizes.tensor <= per_node;
            const double primary = hpz > 1 ? 1.0 : 2.0 * gas, secondary = 2.0 * gas - primary;
            bytes = gas * share_of * gr + primary * share_of * pg, collectives = units * (gas + primary);
            if (hpz > 1)
              comm_local += secondary * (double(hpz - 1) / hpz * p / (inside ? node_bandwidth : data_bandwidth) +
                                         units * 2 * (hpz - 1) * (inside ? rates.latency_s : link_latency));
            if (z.zero_quantized_weights)  // quantize the shard, dequantize the unit
              comm_local += primary * (padded / n / quantize + padded / dequantize);
            break;
          }
        }
        if (z.zero_quantized_gradients)  // quantize every chunk, sum the n dequantized contributions
          comm_local += (stage >= 2 ? gas : 1.0) * (padded / quantize + padded / accumulate);
      }
      t.comm_s = std::max(t.comm_s, bytes / data_bandwidth + collectives * 2 * double(n - 1) * link_latency + comm_local);
    }
  }
  // 1F1B: the slowest stage's micro-batch sets the pace; the first result leaves the last stage
  // after stages - 1 slots of filling, and as many drain at the end.
  const double slots = gas + double(sizes.pipeline - 1);
  t.compute_s = slots * compute_mb;
  t.bubble_s = double(sizes.pipeline - 1) * compute_mb;
  t.comm_s += slots * (micro_batch_s - compute_mb);
  if (sizes.pipeline > 1)  // the tied embedding's gradient, summed over the first and last stage
    t.comm_s += all_reduce_s(double(shape.vocab_size * shape.d_model / sizes.tensor) *
                                 double(c10::elementSize(precision.reduce)), 2, node_bandwidth);
  t.exposed_comm_s = t.comm_s;  // on a CPU the collectives' copies compete with the backward for the cores
  // Disk: the swapped optimizer states and masters are read and written once per step; swapped
  // weight shards are read for each gather (forward and backward of every micro-batch).
  if (memory.on_disk > 0) {
    const double own = own_most;
    const double optimizer_bytes = z.offload_optimizer.device == OffloadDevice::kNvme
                                       ? double(memory.on_disk) - (stage == 3 && z.offload_param.device == OffloadDevice::kNvme
                                                                       ? own * double(c10::elementSize(precision.param))
                                                                       : 0.0)
                                       : 0.0;
    t.io_s = optimizer_bytes / rates.disk_read_bytes_per_s + optimizer_bytes / rates.disk_write_bytes_per_s;
    if (stage == 3 && z.offload_param.device == OffloadDevice::kNvme)
      t.io_s += 2 * gas * own * double(c10::elementSize(precision.param)) / rates.disk_read_bytes_per_s;
    t.io_s *= per_node;  // one disk per node
  }
  t.total_s = t.compute_s + t.optimizer_s + t.exposed_comm_s + t.io_s;
  return t;
}

namespace {

std::string describe(const Config& config, const Layout& layout, const zero::PrecisionPolicy& p,
                     const optim::FlatOptimizer& optimizer) {
  const ZeroConfig& z = config.zero_optimization;
  std::string s = ds::str("ZeRO-", z.stage, ", ", p.name, " (compute ", zero::dtype_name(p.working), ")");
  const ParallelSizes sizes = parallel_sizes(config, layout);
  if (sizes.pipeline * sizes.tensor > 1)
    s += ds::str(", pipeline ", sizes.pipeline, " x tensor ", sizes.tensor, " x data ", sizes.data);
  if (sizes.sequence > 1) s += ds::str(", sequence ", sizes.sequence, " (Ulysses)");
  if (z.offload_optimizer.device == OffloadDevice::kNvme) s += ", offload_optimizer nvme";
  if (z.stage == 3 && z.offload_param.device == OffloadDevice::kNvme) s += ", offload_param nvme";
  if (z.zero_quantized_weights) s += ", qwZ";
  if (const int hpz = hpz_ranks(config, sizes.data); hpz > 1) s += ds::str(", hpZ ", hpz);
  if (z.zero_quantized_gradients) s += ", qgZ";
  if (optimizer.sends_compressed_momentum())
    s += ds::str(", ", optimizer_type_name(config.optimizer.type), " after freeze_step (compressed momentum)");
  return s;
}

}  // namespace

Estimate estimate(const Config& config, const ModelShape& shape, const Layout& layout, const Rates& rates) {
  shape.validate();
  if (layout.ranks_per_node < 1 || layout.nodes < 1)
    throw ConfigError(ds::str("ranks per node and nodes must be at least 1, got ", layout.ranks_per_node, " and ",
                              layout.nodes));
  if (layout.context < 1 || layout.context > shape.seq_len)
    throw ConfigError(ds::str("the context ", layout.context, " must be from 1 to the model's ", shape.seq_len));
  check_config(config);  // what the engine refuses is not estimated
  check_hpz(config, parallel_sizes(config, layout).data);
  if (const ParallelSizes p = parallel_sizes(config, layout); p.sequence > 1) {
    // (A tensor size that does not divide the heads is named by stage_shares.)
    if (shape.n_head % p.tensor == 0 && shape.n_head % (p.tensor * p.sequence) != 0)
      throw ConfigError(ds::str("sequence_parallel_size ", p.sequence, " does not divide the ", shape.n_head / p.tensor,
                                " heads of a tensor rank: use a size that divides them"));
    if (layout.context % p.sequence != 0)
      throw ConfigError(ds::str("sequence_parallel_size ", p.sequence, " does not divide the context ", layout.context,
                                ": ds-train pads examples to a multiple; estimate that length"));
  }
  const zero::PrecisionPolicy precision = zero::PrecisionPolicy::from_config(config);
  const std::unique_ptr<optim::FlatOptimizer> optimizer = optim::make_optimizer(config.optimizer);
  Estimate e;
  e.stages = estimate_memory(config, shape, layout, rates, precision, *optimizer);
  e.memory = *std::max_element(e.stages.begin(), e.stages.end(),
                               [](const Memory& a, const Memory& b) { return a.peak() < b.peak(); });
  e.time = estimate_time(config, shape, layout, rates, precision, e.memory, *optimizer);
  e.tokens_per_step = config.train_batch_size * layout.context;
  e.describe = describe(config, layout, precision, *optimizer);
  return e;
}

namespace {

// `config` with another stage and offload (nvme paths as given, or a placeholder: nothing is
// opened here).
Config with_choice(const Config& config, int stage, bool optimizer_nvme, bool param_nvme) {
  Config c = config;
  ZeroConfig& z = c.zero_optimization;
  if (stage != z.stage) z.overlap_comm = stage == 3;  // DeepSpeed's default follows the stage
  z.stage = stage;
  z.offload_optimizer.device = optimizer_nvme ? OffloadDevice::kNvme : OffloadDevice::kNone;
  z.offload_param.device = param_nvme ? OffloadDevice::kNvme : OffloadDevice::kNone;
  if (optimizer_nvme && !z.offload_optimizer.nvme_path) z.offload_optimizer.nvme_path = "/nvme";
  if (param_nvme && !z.offload_param.nvme_path) z.offload_param.nvme_path = "/nvme";
  return c;
}

bool fits(const Estimate& e, const Layout& layout, const Rates& rates) {
  return e.memory.peak() * layout.ranks_per_node <= rates.node_memory_bytes;
}

}  // namespace

std::vector<Choice> every_choice(const Config& config, const ModelShape& shape, const Layout& layout, const Rates& rates) {
  std::vector<Choice> out;
  const bool narrow = zero::PrecisionPolicy::from_config(config).param != at::kFloat;
  const int passes = optim::make_optimizer(config.optimizer)->passes();
  for (int stage = 0; stage <= 3; ++stage) {
    std::vector<std::pair<bool, bool>> offloads = {{false, false}};
    if (stage >= 1) offloads.push_back({true, false});
    if (stage == 3 && narrow) offloads.push_back({true, true});  // weight shards on disk need bf16/fp16
    for (auto [opt, par] : offloads) {
      if ((opt || par) && passes > 1)
        continue;  // the engine swaps states only for a one-pass optimizer (not Lamb)
      const Config choice = with_choice(config, stage, opt, par);
      try {
        check_config(choice);
        (void)Config::from_json(choice.to_json(), "ds-estimate");  // the config's own rules (1-bit optimizers' stages)
      } catch (const ConfigError&) {
        continue;  // the engine would refuse it (a pipeline at stage 2, OneBitAdam at stage 3, ...)
      }
      Choice c;
      c.stage = stage;
      c.offload = par ? "optimizer+param nvme" : opt ? "optimizer nvme" : "none";
      c.estimate = estimate(choice, shape, layout, rates);
      c.fits = fits(c.estimate, layout, rates);
      out.push_back(std::move(c));
    }
  }
  return out;
}

std::string what_would_fit(const Config& config, const ModelShape& shape, const Layout& layout, const Rates& rates) {
  if (fits(estimate(config, shape, layout, rates), layout, rates)) return "";
  // Cheapest first: a higher stage, then offload, then checkpointing, then more nodes.
  const bool piped = config.pipeline.stages > 1;
  for (bool checkpoint : {checkpointed(config, layout), true}) {
    for (int nodes = layout.nodes; nodes <= layout.nodes * 1024; nodes *= 2) {
      Layout l = layout;
      l.nodes = nodes, l.checkpoint_blocks = checkpoint;
      Config resolved = config;
      if (nodes != layout.nodes) {  // the same micro-batch per rank and accumulation
        resolved.train_batch_size = config.train_micro_batch_size_per_gpu * config.gradient_accumulation_steps *
                                    l.world() / parallel_sizes(config, layout).model_ranks();
      }
      for (const Choice& c : every_choice(resolved, shape, l, rates)) {
        if (!c.fits) continue;
        std::string change = ds::str("ZeRO stage ", c.stage);
        if (c.offload != "none") change += ds::str(" with ", c.offload, " offload");
        if (checkpoint && !checkpointed(config, layout))
          change += piped ? " and pipeline.activation_checkpoint_interval 1" : " and activation checkpointing";
        if (nodes != layout.nodes) change += ds::str(" on ", nodes, " nodes of ", layout.ranks_per_node, " ranks");
        return ds::str(change, " fits: ", ds::format_bytes(double(c.estimate.memory.peak())), " per rank");
      }
    }
  }
  int64_t least = 0;  // the activations of the stage that keeps the most, checkpointed
  for (const StageShare& share : stage_shares(config, shape, layout))
    least = std::max(least, activation_bytes(shape, layout, config, zero::PrecisionPolicy::from_config(config), true, share));
  return ds::str("nothing up to ", layout.nodes * 1024, " nodes fits: the activations of one micro-batch (",
                 ds::format_bytes(double(least)),
                 " checkpointed) or the runtime exceed a rank's share of RAM; use a smaller micro-batch or context");
}

std::string scaling_table(const Config& config, const ModelShape& shape, const Layout& layout, const Rates& rates,
                          const std::vector<int>& world_sizes) {
  std::ostringstream out;
  out << "ranks  | per-rank peak (model states) at ZeRO-0 / 1 / 2 / 3                     | comm share of the step 0 / 1 / 2 / 3\n";
  const int64_t model_ranks = std::max<int64_t>(1, config.pipeline.stages) *
                              std::max<int64_t>(1, config.tensor_parallel.autotp_size) *
                              std::max<int64_t>(1, config.sequence_parallel_size);
  for (int n : world_sizes) {
    Layout l = layout;
    l.ranks_per_node = std::min(layout.ranks_per_node, n);
    l.nodes = std::max(1, n / l.ranks_per_node);
    if (l.world() != n) {
      out << ds::str(n, " ranks: not whole nodes of ", l.ranks_per_node, " ranks\n");
      continue;
    }
    if (n % model_ranks != 0) {
      out << ds::str(n, " ranks: not a multiple of pipeline stages x tensor x sequence size (", model_ranks, ")\n");
      continue;
    }
    Config c = config;
    c.train_batch_size = config.train_micro_batch_size_per_gpu * config.gradient_accumulation_steps * l.world() / model_ranks;
    std::string mem, share;
    for (int stage = 0; stage <= 3; ++stage) {
      const Config choice = with_choice(c, stage, false, false);
      try {
        check_config(choice);
      } catch (const ConfigError&) {  // refused by the engine (a pipeline at stage 2 or 3)
        mem += stage ? " / refused" : "refused";
        share += stage ? " / -" : "-";
        continue;
      }
      const Estimate e = estimate(choice, shape, l, rates);
      mem += ds::str(stage ? " / " : "", ds::format_bytes(double(e.memory.peak())), " (",
                     ds::format_bytes(double(e.memory.model_states())), ")");
      char buf[16];
      std::snprintf(buf, sizeof buf, "%.0f%%", 100 * e.time.comm_share());
      share += ds::str(stage ? " / " : "", buf);
    }
    char head[16];
    std::snprintf(head, sizeof head, "%-6d | ", l.world());
    out << head << mem << " | " << share << "\n";
  }
  return out.str();
}

}  // namespace ds::estimate
