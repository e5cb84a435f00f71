// ds-estimate: how much memory each rank needs and how long a step takes, before running.
//
//   ds-estimate --n-layer 12 --n-head 12 --d-model 768 --seq-len 1024 --micro-batch 4 --ranks-per-node 2
//   ds-estimate --params 1.3e9 --n-layer 24 --d-model 2048 --seq-len 2048 --config ds_config.json --nodes 8
//   ds-estimate ... --calibrate [--disk-dir /nvme]      # measure this machine's rates first (< 1 minute)
//   ds-estimate ... --scale 1,8,64,512,1000 --link-gbps 100
//   ds-estimate ... --ranks-per-node 8 --nodes 4 --pipeline 4 --tensor 2   # 3D: 4 stages x 2 x 4 data
//
// Prints the per-rank memory part by part, the step time, a table of every ZeRO stage and
// offload choice, and (with --scale) how per-rank memory and the communication share change
// with the number of ranks. A run that fits nowhere says what would. Errors: one line, exit 1
// (usage: 2).
#include <CLI/CLI.hpp>
#include <cstdio>
#include <iostream>
#include <string>
#include <unistd.h>

#include "ds/common/error.h"
#include "ds/common/openmp_env.h"
#include "ds/common/strings.h"
#include "ds/config/config.h"
#include "ds/estimate/estimate.h"

namespace {

struct Args {
  std::string config;
  int64_t n_layer = 12, n_head = 12, d_model = 768, seq_len = 1024, vocab = 50257, context = 0;
  double params = 0;
  int64_t micro_batch = 0, accumulation = 0;  // 0: not given
  int ranks_per_node = 1, nodes = 1;
  int stage = -1, pipeline = 0, tensor = 0, sequence = 0;
  std::string dtype, offload;
  bool checkpoint = false, calibrate = false;
  std::string disk_dir, scale;
  double link_gbps = 0, ram_gib = 0;
};

constexpr const char* kDefaultConfig = R"({"train_batch_size": "auto", "train_micro_batch_size_per_gpu": "auto",
  "gradient_accumulation_steps": "auto", "optimizer": {"type": "AdamW", "params": {"lr": 1e-4}}})";

std::string mib(double bytes) { return ds::format_bytes(bytes); }

std::string bin_dir(const char* argv0) {
  char buf[4096];
  const ssize_t n = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
  std::string self = n > 0 ? std::string(buf, size_t(n)) : std::string(argv0);
  return self.substr(0, self.rfind('/'));
}

void print_memory(const ds::estimate::Estimate& e, const ds::estimate::Layout& l) {
  const auto& m = e.memory;
  std::printf("per rank (%s, %d ranks)%s:\n", e.describe.c_str(), l.world(),
              m.stages > 1 ? ds::str("; pipeline stage ", m.stage, " of ", m.stages, ", whose ranks need the most").c_str() : "");
  auto row = [](const char* what, int64_t bytes, const std::string& note = "") {
    std::printf("  %-34s %12s%s\n", what, mib(double(bytes)).c_str(), note.c_str());
  };
  row("weights", m.params);
  row("gradients", m.grads);
  row("fp32 masters", m.masters);
  row("optimizer states", m.optimizer_states);
  row("= model states", m.model_states());
  if (m.persistent) row("persistent units (stage 3)", m.persistent);
  if (m.gathered) row("gathered units (stage 3)", m.gathered);
  if (m.in_flight) row("gradients in flight", m.in_flight);
  row("activations", m.activations,
      ds::str("  (", l.checkpoint_blocks ? "checkpointed; " : "", "without checkpointing ",
              mib(double(m.activations_without_checkpointing)), ", with ", mib(double(m.activations_with_checkpointing)), ")"));
  if (m.io_buffers) row("I/O buffers", m.io_buffers);
  row("process runtime", m.runtime);
  row("= peak RSS", m.peak());
  if (m.on_disk) row("on disk (not in RAM)", m.on_disk);
  if (e.stages.size() > 1) {
    std::printf("  each stage's ranks:");
    for (const auto& s : e.stages)
      std::printf("%s stage %d %s (model states %s, activations %s)", s.stage ? ";" : "", s.stage,
                  mib(double(s.peak())).c_str(), mib(double(s.model_states())).c_str(), mib(double(s.activations)).c_str());
    std::printf("\n");
  }
  const auto& t = e.time;
  char bubble[64] = "";
  if (t.bubble_s > 0) std::snprintf(bubble, sizeof bubble, " (pipeline bubble %.3f)", t.bubble_s);
  std::printf("step: %.3f s = compute %.3f%s + optimizer %.3f + communication %.3f + disk %.3f (communication %.0f%% "
              "of the step); %.0f tokens/s over all ranks\n",
              t.total_s, t.compute_s, bubble,
              t.optimizer_s, t.exposed_comm_s, t.io_s, 100 * t.comm_share(),
              t.total_s > 0 ? double(e.tokens_per_step) / t.total_s : 0.0);
}

int run(const Args& a, const char* argv0) {
  ds::Config config = a.config.empty() ? ds::Config::parse(kDefaultConfig, "default config") : ds::Config::load(a.config);
  if (config.optimizer.type == ds::OptimizerType::kNone) throw ds::ConfigError(ds::str(a.config, ": no \"optimizer\" section; the optimizer's states are part of the estimate"));
  ds::estimate::ModelShape shape;
  if (a.params > 0)  // the vocabulary a multiple of the tensor-parallel size, which splits it
    shape = ds::estimate::ModelShape::from_parameters(
        int64_t(a.params), a.n_layer, a.d_model, a.n_head, a.seq_len,
        a.tensor > 0 ? a.tensor : std::max<int64_t>(1, config.tensor_parallel.autotp_size));
  else
    shape.n_layer = a.n_layer, shape.n_head = a.n_head, shape.d_model = a.d_model, shape.seq_len = a.seq_len,
    shape.vocab_size = a.vocab;
  shape.validate();
  ds::estimate::Layout layout;
  layout.ranks_per_node = a.ranks_per_node, layout.nodes = a.nodes;
  layout.context = a.context > 0 ? a.context : shape.seq_len;
  // ds-train checkpoints a pipeline's layers by pipeline.activation_checkpoint_interval (the
  // activation_checkpointing section then recomputes nothing); --checkpoint sets it to 1.
  if (a.pipeline > 0) config.pipeline.stages = a.pipeline;
  if (config.pipeline.stages > 1) {
    if (a.checkpoint && config.pipeline.activation_checkpoint_interval == 0) config.pipeline.activation_checkpoint_interval = 1;
    layout.checkpoint_blocks = config.pipeline.activation_checkpoint_interval > 0;
  } else {
    layout.checkpoint_blocks = a.checkpoint || config.activation_checkpointing.present;
  }
  if (a.stage >= 0) config.zero_optimization.stage = a.stage;
  if (a.tensor > 0) config.tensor_parallel.autotp_size = a.tensor;
  if (a.sequence > 0) config.sequence_parallel_size = a.sequence;
  if (!a.dtype.empty()) {
    config.bf16.enabled = a.dtype == "bf16";
    config.fp16.enabled = a.dtype == "fp16";
  }
  if (a.offload == "optimizer" || a.offload == "all") {
    config.zero_optimization.offload_optimizer.device = ds::OffloadDevice::kNvme;
    if (!config.zero_optimization.offload_optimizer.nvme_path) config.zero_optimization.offload_optimizer.nvme_path = a.disk_dir.empty() ? "/nvme" : a.disk_dir;
  }
  if (a.offload == "all") {
    config.zero_optimization.offload_param.device = ds::OffloadDevice::kNvme;
    if (!config.zero_optimization.offload_param.nvme_path) config.zero_optimization.offload_param.nvme_path = a.disk_dir.empty() ? "/nvme" : a.disk_dir;
  }
  ds::ResolveOptions ro;
  ro.world_size = layout.world();
  // The options fill what the config leaves "auto"; with no batch key anywhere, 1 and 1.
  // (Config::resolve sets the accumulation to 1 when only the micro-batch is known.)
  const bool no_size = config.train_batch_size == 0 && config.train_micro_batch_size_per_gpu == 0;
  ro.train_micro_batch_size_per_gpu = a.micro_batch > 0 ? a.micro_batch : no_size ? 1 : 0;
  ro.gradient_accumulation_steps = a.accumulation;
  config.resolve(ro);
  for (const auto& w : config.warnings()) std::fprintf(stderr, "warning: %s\n", w.c_str());

  ds::estimate::Rates rates = ds::estimate::Rates::defaults();
  if (a.calibrate) {
    std::fprintf(stderr, "ds-estimate: measuring this machine's rates...\n");
    rates = ds::estimate::calibrate(shape, layout, config.train_micro_batch_size_per_gpu, a.disk_dir, bin_dir(argv0),
                                    int(std::max<int64_t>(1, config.tensor_parallel.autotp_size)));
  }
  if (a.link_gbps > 0) rates.link_bytes_per_s = a.link_gbps * 1e9 / 8;
  if (a.ram_gib > 0) rates.node_memory_bytes = int64_t(a.ram_gib * double(1ll << 30));

  std::printf("ds-estimate: GPT %lld layers x %lld heads x %lld wide, context %lld of %lld, vocab %lld: %lld parameters\n",
              (long long)shape.n_layer, (long long)shape.n_head, (long long)shape.d_model, (long long)layout.context,
              (long long)shape.seq_len, (long long)shape.vocab_size, (long long)shape.parameters());
  std::printf("ds-estimate: %d node(s) x %d rank(s), micro-batch %lld x accumulation %lld = global batch %lld\n",
              layout.nodes, layout.ranks_per_node, (long long)config.train_micro_batch_size_per_gpu,
              (long long)config.gradient_accumulation_steps, (long long)config.train_batch_size);
  std::printf("ds-estimate: rates %s\n\n", rates.describe().c_str());
  const ds::estimate::Estimate e = ds::estimate::estimate(config, shape, layout, rates);
  print_memory(e, layout);

  std::printf("\nevery choice (per rank; %s of RAM per node over %d rank(s)):\n", mib(double(rates.node_memory_bytes)).c_str(),
              layout.ranks_per_node);
  std::printf("  %-6s %-22s %12s %12s %12s %10s  %s\n", "stage", "offload", "model states", "peak RSS", "on disk",
              "step s", "fits");
  for (const auto& c : ds::estimate::every_choice(config, shape, layout, rates))
    std::printf("  %-6d %-22s %12s %12s %12s %10.3f  %s\n", c.stage, c.offload.c_str(),
                mib(double(c.estimate.memory.model_states())).c_str(), mib(double(c.estimate.memory.peak())).c_str(),
                mib(double(c.estimate.memory.on_disk)).c_str(), c.estimate.time.total_s, c.fits ? "yes" : "no");
  if (!a.scale.empty()) {
    std::vector<int> sizes;
    for (const auto& s : ds::split(a.scale, ',')) {
      const int n = std::atoi(s.c_str());
      if (n < 1) throw ds::ConfigError(ds::str("--scale: '", s, "' is not a positive rank count"));
      sizes.push_back(n);
    }
    std::printf("\nscaling (micro-batch and accumulation per rank fixed; link %s/s between nodes):\n%s",
                mib(rates.link_bytes_per_s).c_str(), ds::estimate::scaling_table(config, shape, layout, rates, sizes).c_str());
  }
  const std::string advice = ds::estimate::what_would_fit(config, shape, layout, rates);
  if (!advice.empty()) {
    std::fprintf(stderr, "ds-estimate: error: %s per rank does not fit %s of RAM per node over %d rank(s); %s\n",
                 mib(double(e.memory.peak())).c_str(), mib(double(rates.node_memory_bytes)).c_str(),
                 layout.ranks_per_node, advice.c_str());
    return 1;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  ds::ensure_passive_openmp(argv);  // --calibrate's rates are the tools' (libgomp must not spin)
  CLI::App app{"Estimate per-rank memory and step time of a deepspeed.cpp run of a GPT-shaped model", "ds-estimate"};
  Args a;
  app.add_option("--config", a.config, "ds_config.json (default: AdamW, ZeRO 0, fp32)");
  app.add_option("--n-layer", a.n_layer, "transformer blocks")->capture_default_str()->check(CLI::Range(int64_t(1), int64_t(100000)));
  app.add_option("--n-head", a.n_head, "attention heads")->capture_default_str()->check(CLI::Range(int64_t(1), int64_t(100000)));
  app.add_option("--d-model", a.d_model, "model width")->capture_default_str()->check(CLI::Range(int64_t(1), int64_t(1000000)));
  app.add_option("--seq-len", a.seq_len, "the model's context (position embeddings)")->capture_default_str()->check(CLI::Range(int64_t(1), int64_t(10000000)));
  app.add_option("--vocab", a.vocab, "vocabulary")->capture_default_str()->check(CLI::Range(int64_t(1), int64_t(100000000)));
  app.add_option("--params", a.params, "a parameter count instead of --vocab (the vocabulary takes the rest)")->check(CLI::PositiveNumber);
  app.add_option("--context", a.context, "tokens per sample (default: --seq-len)")->check(CLI::Range(int64_t(1), int64_t(10000000)));
  app.add_option("--micro-batch", a.micro_batch, "train_micro_batch_size_per_gpu when the config leaves it auto (default: derived, else 1)")->check(CLI::Range(int64_t(1), int64_t(1000000)));
  app.add_option("--accumulation", a.accumulation, "gradient_accumulation_steps when the config leaves it auto (default: derived, else 1)")->check(CLI::Range(int64_t(1), int64_t(1000000)));
  app.add_option("--ranks-per-node", a.ranks_per_node, "ranks on each node")->capture_default_str()->check(CLI::Range(1, 4096));
  app.add_option("--nodes", a.nodes, "nodes")->capture_default_str()->check(CLI::Range(1, 1000000));
  app.add_option("--stage", a.stage, "ZeRO stage (default: the config's)")->check(CLI::Range(0, 3));
  app.add_option("--pipeline", a.pipeline, "pipeline stages (default: the config's pipeline.stages)")->check(CLI::Range(1, 4096));
  app.add_option("--tensor", a.tensor, "tensor-parallel size (default: the config's tensor_parallel.autotp_size)")->check(CLI::Range(1, 4096));
  app.add_option("--sequence", a.sequence, "Ulysses sequence-parallel size (default: the config's sequence_parallel_size)")->check(CLI::Range(1, 4096));
  app.add_option("--dtype", a.dtype, "fp32 | bf16 | fp16 (default: the config's)")->check(CLI::IsMember({"fp32", "bf16", "fp16"}));
  app.add_option("--offload", a.offload, "none | optimizer | all (optimizer states, and at stage 3 weights, on nvme)")->check(CLI::IsMember({"none", "optimizer", "all"}));
  app.add_flag("--checkpoint", a.checkpoint, "activation checkpointing of every block (also: an activation_checkpointing section; with pipeline stages pipeline.activation_checkpoint_interval)");
  app.add_flag("--calibrate", a.calibrate, "measure this machine's rates first (under a minute)");
  app.add_option("--disk-dir", a.disk_dir, "with --calibrate: measure the disk here; the nvme_path for --offload");
  app.add_option("--scale", a.scale, "rank counts for the scaling table, e.g. 1,8,64,512,1000");
  app.add_option("--link-gbps", a.link_gbps, "bandwidth between nodes in Gbit/s (default 100)")->check(CLI::PositiveNumber);
  app.add_option("--ram-gib", a.ram_gib, "RAM per node in GiB (default: this machine's with --calibrate, else 24)")->check(CLI::PositiveNumber);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);
    std::fprintf(stderr, "ds-estimate: error: %s\n", e.what());
    return 2;
  }
  try {
    return run(a, argv[0]);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ds-estimate: error: %s\n", e.what());
    return 1;
  }
}
