// The memory and step-time estimator behind ds-estimate: what one rank of a data-parallel
// run of the reference GPT (or a GPT-shaped model of a given size) needs, part by part, under
// a ds_config's ZeRO stage, precision and offload, and how long a step takes from rates
// measured on this machine.
//
//   ds::estimate::Rates rates = ds::estimate::Rates::defaults();   // or calibrate(shape, layout)
//   ds::estimate::Estimate e = ds::estimate::estimate(config, shape, layout, rates);
//   e.memory.peak();   e.time.total_s;
//
// The model states (weights, gradients, fp32 masters, optimizer states) are exact: they come
// from the same per-unit layout (zero::plan_unit) the engine allocates from, over the units
// the engine makes of the reference GPT. Activations, gathered units, buffers in flight and
// the process runtime are models of this implementation, checked against measured runs
// (docs/BENCHMARKS.md); the step time is compute + exposed communication + disk at the rates.
// Pipeline stages (`pipeline.stages`, 1F1B) x tensor parallelism (`tensor_parallel.autotp_size`)
// x data parallelism: each stage's units as its tensor ranks hold them, the activations of
// the micro-batches a stage keeps in flight, the pipeline's bubble and the tensor group's
// all-reduces; the rank that needs most memory is reported.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "ds/config/config.h"

namespace ds::estimate {

// One pipeline stage's share of the model, as each of its tensor ranks holds it.
struct StageShare {
  int stage = 0;
  std::vector<int64_t> units;  // the engine's units on the stage, each this tensor rank's slice
  int64_t blocks = 0;          // transformer blocks on the stage
  bool first = true, last = true;  // holds the token embedding / the head
  double flops_per_token = 0;  // training FLOPs of the stage's layers per token, unsplit
};

// A GPT-2 shaped model: blocks of 12 d^2 + 13 d parameters, a token embedding tied to the
// head, a position embedding and a final LayerNorm.
struct ModelShape {
  int64_t n_layer = 2, d_model = 128, n_head = 4, seq_len = 64, vocab_size = 256;
  // A GPT of `parameters` with the given layers, width and context: the vocabulary takes the
  // rest, rounded down to a multiple of `vocab_multiple` (the tensor-parallel size, which must
  // divide it). Throws ds::ConfigError when the blocks alone exceed `parameters`.
  static ModelShape from_parameters(int64_t parameters, int64_t n_layer, int64_t d_model, int64_t n_head, int64_t seq_len,
                                    int64_t vocab_multiple = 1);
  void validate() const;  // ds::ConfigError naming the field
  int64_t parameters() const;
  // The engine's units of the reference GPT, in order: wte, wpe, each block, ln_f.
  std::vector<int64_t> unit_sizes() const;
  // Training FLOPs per token (6N + 12LTd), and the forward of the blocks alone per token.
  double flops_per_token(int64_t context) const;
  double block_forward_flops_per_token(int64_t context) const;
  // The stages of a `pipeline` x `tensor` layout: the layers as ds-train's pipeline GPT lays
  // them out (TokenEmbedding, PositionEmbedding, the blocks, LayerNorm, the tied LMHead) cut
  // by `partition` (pipeline.partition's methods); a block's slice holds 12 d^2/t + 7 d/t + 6 d
  // parameters (its LayerNorms and the row-parallel biases whole). Throws ds::ConfigError for
  // a tensor size that does not divide the heads or the vocabulary, or more stages than layers.
  std::vector<StageShare> stage_shares(int pipeline, int tensor, const std::string& partition, int64_t context) const;
};

// Where it runs and what one rank computes per step.
struct Layout {
  int ranks_per_node = 1, nodes = 1;
  int64_t context = 64;          // tokens per sample (<= seq_len)
  bool checkpoint_blocks = false;  // activation checkpointing of every block
  int world() const { return ranks_per_node * nodes; }
};

// Rates of this machine. defaults() are this project's measured machine (docs/BENCHMARKS.md);
// calibrate() measures them here.
struct Rates {
  int cores = 2;
  double gemm_flops = 64e9;         // at::mm 1024^3 fp32 with every core, FLOP/s
  double model_efficiency = 0.5;    // the GPT's training FLOP rate / gemm_flops
  // With tensor parallelism: one tensor slice's rate (its 1/t of the FLOPs; the LayerNorms and
  // residuals whole, the GEMMs narrower) / the whole model's, at tensor_size (measured; 1 when
  // not, which makes a tensor-parallel step a lower bound).
  int tensor_size = 1;
  double tensor_efficiency = 1.0;
  double memory_bytes_per_s = 8e9;  // streaming copy, every core (the optimizer step is bound by it)
  double loopback_bytes_per_s = 1.5e9;  // a rank's all-reduce bus bandwidth between ranks of one node
  double link_bytes_per_s = 12.5e9;     // between nodes (100 Gbit/s)
  // Per step of a collective (2 (n - 1) of them) between ranks of one node: a 2-process Gloo
  // all-reduce of one float on loopback measured ~1 ms on this project's 2-vCPU machines
  // (2026-12-01); and between nodes (a data group that spans them).
  double latency_s = 500e-6;
  double link_latency_s = 50e-6;
  double disk_read_bytes_per_s = 1e9, disk_write_bytes_per_s = 0.5e9;
  // The compressions' own loops, values per second on one thread (a rank's): the 1-bit
  // all-reduce's (error feedback, sign packing, the server's sums, unpacking; OneBitAllReduce on
  // one rank) and ZeRO++'s int8 blocks (quantizing fp32; dequantizing into fp32; adding the
  // dequantized values to an fp32 sum, qgZ's). Defaults: the AMD EPYC of 2026-12-02.
  double onebit_values_per_s = 87e6;
  double quantize_values_per_s = 968e6, dequantize_values_per_s = 2.9e9, accumulate_values_per_s = 2.7e9;
  int64_t runtime_bytes = 200ll << 20;  // one rank's RSS with LibTorch, BLAS and the comm up, no model
  int64_t node_memory_bytes = 24ll << 30;
  std::string source = "defaults";
  static Rates defaults();
  std::string describe() const;
};

// Measures the rates here in well under a minute, with every core: the GEMM rate, the GPT's
// training rate at this shape (the whole model when small, else one block on fewer
// sequences), a streaming copy, the loopback all-reduce between two local processes, the disk
// under `disk_dir` ("" = skipped), the runtime's RSS (ds-train in `bin_dir`, one tiny step,
// on two ranks when the layout has several per node; "" = skipped) and the RAM; with
// `tensor` > 1 also one tensor slice's training rate (its collectives moving nothing).
Rates calibrate(const ModelShape& shape, const Layout& layout, int64_t micro_batch, const std::string& disk_dir,
                const std::string& bin_dir, int tensor = 1);

// One rank's memory, in bytes.
struct Memory {
  // model states, as Engine::memory_breakdown() reports them
  int64_t params = 0, grads = 0, masters = 0, optimizer_states = 0;
  int64_t on_disk = 0;        // offload to nvme: not in RAM
  int64_t persistent = 0;     // stage 3: units under the persistence threshold, always gathered
  int64_t gathered = 0;       // stage 3: the unit in use and what the prefetch holds ahead
  int64_t in_flight = 0;      // gradients between the backward and their reduction, comm buffers
  int64_t activations = 0;    // the peak of saved activations and the head's logits, in the backward
  int64_t activations_without_checkpointing = 0, activations_with_checkpointing = 0;
  int64_t io_buffers = 0;     // offload to nvme: the aligned read/write buffers
  int64_t runtime = 0;        // LibTorch, BLAS, comm threads
  int stage = 0, stages = 1;  // the pipeline stage whose ranks need the most (of `stages`)
  int64_t model_states() const { return params + grads + masters + optimizer_states; }
  int64_t peak() const {
    return model_states() + persistent + gathered + in_flight + activations + io_buffers + runtime;
  }
};

// One step, in seconds.
struct StepTime {
  double compute_s = 0;    // forward + backward (+ recomputation), the pipeline's bubble included
  double bubble_s = 0;     // of compute_s: the 1F1B fill and drain, (stages - 1) micro-batches
  double optimizer_s = 0;  // the optimizer over this rank's part (memory bound)
  double comm_s = 0;       // gradient reduction (+ stage 3 gathers), tensor all-reduces, stage sends
  double exposed_comm_s = 0;  // what the backward does not hide
  double io_s = 0;         // nvme offload reads and writes
  double total_s = 0;
  double comm_share() const { return total_s > 0 ? exposed_comm_s / total_s : 0; }
};

struct Estimate {
  Memory memory;               // the ranks that need the most (of `stages`)
  std::vector<Memory> stages;  // each pipeline stage's ranks (one entry without a pipeline)
  StepTime time;
  int64_t tokens_per_step = 0;  // over all ranks
  std::string describe;         // "ZeRO-2, bf16, offload_optimizer nvme"
};

// `config` resolved for layout.world() ranks (its pipeline stages and tensor size divide
// them). Throws ds::ConfigError for what the engine would refuse or a context longer than the
// model's.
Estimate estimate(const Config& config, const ModelShape& shape, const Layout& layout, const Rates& rates);

// The same run at every ZeRO stage and offload choice: one row each (DeepSpeed's
// estimate_zero*_mem_needs_all_live), peak per rank and whether it fits the node's RAM.
struct Choice {
  int stage = 0;
  std::string offload;  // "none", "optimizer nvme", "optimizer+param nvme"
  Estimate estimate;
  bool fits = false;
};
std::vector<Choice> every_choice(const Config& config, const ModelShape& shape, const Layout& layout, const Rates& rates);

// When nothing fits: the least change that does (a higher stage, offload, checkpointing, more
// nodes), in words; "" when the given run fits.
std::string what_would_fit(const Config& config, const ModelShape& shape, const Layout& layout, const Rates& rates);

// Per-rank memory and the communication share of the step at each stage for N ranks (ranks
// per node as given, nodes = N / ranks per node), at the link bandwidth in `rates`.
std::string scaling_table(const Config& config, const ModelShape& shape, const Layout& layout, const Rates& rates,
                          const std::vector<int>& world_sizes);

}  // namespace ds::estimate
