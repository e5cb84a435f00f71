// ds-train: trains the reference GPT with the engine, on an embedded synthetic task (no
// files needed) or on any text file as bytes. Start it under ds-launch for several ranks.
//
//   ds-launch --num_procs 2 ds-train --task reverse --steps 400
//   ds-train --config ds_config.json --data input.txt --n-layer 4 --n-head 4 --d-model 256 --seq-len 128
//   ds-train --steps 400 --save ckpt --save-interval 100      # checkpoints every 100 steps and at the end
//   ds-train --steps 800 --load ckpt --save ckpt              # resumes at step 400, same data order
//   ds-train --init gpt2/model.safetensors --data train.bin --seq-len 256   # fine-tunes GPT-2
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <CLI/CLI.hpp>
#include <torch/utils.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <cstring>
#include <functional>
#include <iostream>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>

#include "ds/comm/communicator.h"
#include "ds/common/cleanup.h"
#include "ds/common/cli.h"
#include "ds/common/error.h"
#include "ds/common/openmp_env.h"
#include "ds/common/plot.h"
#include "ds/common/strings.h"
#include "ds/config/config.h"
#include "ds/data/dataset.h"
#include "ds/data/tokens.h"
#include "ds/models/gpt.h"
#include "ds/models/gpt2_hf.h"
#include "ds/ckpt/checkpoint.h"
#include "ds/pipe/module.h"
#include "ds/seq/ulysses.h"
#include "ds/deepspeed.h"
#include "ds/zero/init.h"

namespace {

// Used when no --config is given: AdamW with warm-up and linear decay, clipping, ZeRO stage 2.
// beta1 0.8 and a peak of 2e-3: with [0.9, 0.98] and 3e-3 the reverse task's loss jumped from
// 3.3 to 10.8 at step ~30 (the plateau before it learns to copy) for 6 of 10 seeds, and lower
// peaks, longer warm-up, beta2 0.95, weight decay 0.1 or eps 1e-6 alone did not remove it;
// this spiked for none of 7 seeds and reaches 100 % held-out accuracy by step 50.
const char* kDefaultConfig = R"({
  "train_batch_size": 64,
  "gradient_accumulation_steps": 1,
  "optimizer": {"type": "AdamW", "params": {"lr": 0.002, "betas": [0.8, 0.98], "weight_decay": 0.01}},
  "scheduler": {"type": "WarmupDecayLR",
                "params": {"warmup_min_lr": 0.0, "warmup_max_lr": 0.002, "warmup_num_steps": 50,
                           "warmup_type": "linear", "total_num_steps": "auto"}},
  "gradient_clipping": 1.0,
  "steps_per_print": 50,
  "zero_optimization": {"stage": 2, "overlap_comm": true}
})";

struct Args {
  std::string config, data, val_data, data_format = "auto", task = "reverse", metrics, plot = "ds-train-loss.svg", save,
      load, init, activation = "gelu";
  int64_t vocab_size = 0;
  int64_t steps = 600, eval_interval = 100, eval_examples = 512, seed = -1, threads = 0, save_interval = 0;
  int64_t n_layer = 2, n_head = 4, d_model = 128, seq_len = 0;
  double dropout = 0.0;
  bool skip_nonfinite = false, dense_attention = false;
  std::set<std::string> given;  // options set on the command line (--init fills in the others)
};

Args parse(int argc, char** argv) {
  using ds::cli::int_range;
  constexpr int64_t kBig = 1'000'000'000;
  Args a;
  CLI::App app{"ds-train: train the reference GPT with deepspeed.cpp (run under ds-launch for several ranks)"};
  app.add_option("--config", a.config, "ds_config.json (default: an embedded AdamW + WarmupDecayLR config)");
  app.add_option("--data", a.data,
                 "train on this file instead of a synthetic task: text (bytes), or tokens (.bin: llm.c's format, "
                 "nanoGPT's train.bin)");
  app.add_option("--val-data", a.val_data, "held-out tokens for a .bin --data (default: its last 10 %)");
  app.add_option("--data-format", a.data_format, "auto | text | llmc | nanogpt (auto: tokens for .bin files)")
      ->capture_default_str()
      ->check(CLI::IsMember({"auto", "text", "llmc", "nanogpt"}));
  app.add_option("--vocab-size", a.vocab_size, "vocabulary of a token file (default: its largest token + 1)")
      ->check(int_range(1, 100'000'000));
  app.add_option("--task", a.task, "embedded synthetic task: reverse | add")->capture_default_str();
  app.add_option("--steps", a.steps, "optimizer steps")->capture_default_str()->check(int_range(1, kBig));
  app.add_option("--n-layer", a.n_layer, "transformer blocks")->capture_default_str()->check(int_range(1, 10000));
  app.add_option("--n-head", a.n_head, "attention heads")->capture_default_str()->check(int_range(1, 10000));
  app.add_option("--d-model", a.d_model, "model width")->capture_default_str()->check(int_range(1, 1'000'000));
  app.add_option("--seq-len", a.seq_len, "context length (default: the task's, or 64 for text)")
      ->check(int_range(1, 1'000'000));
  app.add_option("--dropout", a.dropout, "dropout probability (GPT-2: 0.1) on embeddings, attention and residuals")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 0.99));
  app.add_flag("--dense-attention", a.dense_attention,
               "attention through LibTorch's dense T x T scores instead of the fused block kernels (same "
               "results; slower and T² memory; for comparisons)");
  app.add_option("--activation", a.activation, "the MLP's GELU: gelu (erf) | gelu_tanh (GPT-2's)")
      ->capture_default_str()
      ->check(CLI::IsMember({"gelu", "gelu_tanh"}));
  app.add_option("--init", a.init,
                 "start from Hugging Face GPT-2 weights (model.safetensors; shapes, and heads from a config.json "
                 "beside it, unless given)");
  app.add_option("--seed", a.seed, "seed for weights and data order (default: the config's seed)")
      ->check(int_range(0, INT64_MAX));
  app.add_option("--metrics", a.metrics, "write per-step metrics to this CSV (rank 0)");
  app.add_option("--plot", a.plot, "loss-curve picture (SVG) written at the end; \"\" for none")->capture_default_str();
  app.add_option("--eval-interval", a.eval_interval, "evaluate held-out data every N steps (0: only at the end)")
      ->capture_default_str()
      ->check(int_range(0, kBig));
  app.add_option("--eval-examples", a.eval_examples, "held-out examples per evaluation")
      ->capture_default_str()
      ->check(int_range(1, 1'000'000));
  app.add_option("--threads", a.threads, "intra-op threads per rank (default: cores / local ranks)")
      ->check(int_range(1, 1024));
  app.add_flag("--skip-nonfinite", a.skip_nonfinite,
               "skip a step whose loss or gradient norm is NaN/inf (default: stop with an error)");
  auto* save = app.add_option("--save", a.save,
                              "save checkpoints in this directory (at the end; see --save-interval)");
  app.add_option("--save-interval", a.save_interval, "also save every N steps (default 0: only at the end)")
      ->check(int_range(0, kBig))
      ->needs(save);
  app.add_option("--load", a.load, "resume from the latest checkpoint in this directory (up to --steps)");
  ds::cli::parse_or_exit(app, argc, argv, "ds-train");
  for (const char* o : {"--n-layer", "--n-head", "--d-model", "--seq-len", "--vocab-size", "--activation"})
    if (app.count(o) > 0) a.given.insert(o);
  return a;
}

int env_int(const char* name, int fallback) {
  const char* v = std::getenv(name);
  return v && *v ? std::atoi(v) : fallback;
}

struct Evaluation {
  std::vector<double> steps, values;
  std::string name;  // "held-out accuracy" or "held-out loss"
};

// The data a step sees depends only on the seed and the step, so the next step is the whole
// data position; a checkpoint keeps it (and what it was drawn from) in its client state.
// The model's description goes with it: a checkpoint of another head count has the same
// shapes, and only this tells them apart.
struct RunIdentity {
  uint64_t seed = 0;
  const ds::Dataset* data = nullptr;
  ds::GptConfig model;
};

// "gpt" is the architecture as fields, for `ds-ckpt to-fp32 --hf`.
nlohmann::json data_position(int64_t next_step, const RunIdentity& run) {
  return {{"data_step", next_step},
          {"seed", run.seed},
          {"data", run.data->describe()},
          {"context", run.data->context()},
          {"model", run.model.describe()},
          {"gpt", run.model.to_json()}};
}

void save_checkpoint(ds::Engine& engine, const std::string& dir, const RunIdentity& run) {
  if (engine.comm().rank() == 0) {  // a large model's save takes a while: say what is happening
    std::printf("ds-train: saving a checkpoint of step %lld under %s ...\n", (long long)engine.global_step(), dir.c_str());
    std::fflush(stdout);
  }
  auto start = std::chrono::steady_clock::now();
  std::string path = engine.save_checkpoint(dir, "", data_position(engine.global_step(), run));
  double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (engine.comm().rank() != 0) return;
  std::printf("ds-train: saved checkpoint %s (step %lld, %.2f s)\n", path.c_str(),
              (long long)engine.global_step(), s);
  std::fflush(stdout);
}

// Loads the latest checkpoint in `dir`; returns the step to continue from.
int64_t resume(ds::Engine& engine, const std::string& dir, const RunIdentity& run) {
  if (engine.comm().rank() == 0) {
    std::printf("ds-train: loading the latest checkpoint under %s ...\n", dir.c_str());
    std::fflush(stdout);
  }
  ds::LoadedCheckpoint ck = engine.load_checkpoint(dir);
  const nlohmann::json& c = ck.client_state;
  if (c.contains("model") && c["model"] != run.model.describe())
    throw ds::Error(ds::str("checkpoint ", ck.path, " was trained with ", c["model"].get<std::string>(),
                            "; this run builds ", run.model.describe(),
                            ": give the same --n-layer, --n-head, --d-model, --seq-len and --activation"));
  const uint64_t seed = run.seed;
  const ds::Dataset& data = *run.data;
  int64_t next = c.contains("data_step") && c["data_step"].is_number_integer() ? c["data_step"].get<int64_t>()
                                                                               : ck.global_step;
  if (next != ck.global_step)
    throw ds::Error(ds::str("checkpoint ", ck.path, " is at step ", ck.global_step,
                            " but its data position is step ", next));
  if (engine.comm().rank() != 0) return next;
  std::printf("ds-train: loaded checkpoint %s (step %lld)\n", ck.path.c_str(), (long long)next);
  if (c.contains("seed") && c["seed"] != seed)
    std::fprintf(
        stderr, "warning: the checkpoint was trained with seed %s; seed %llu draws other data from here on\n",
        c["seed"].dump().c_str(), (unsigned long long)seed);
  if (c.contains("data") && c["data"] != data.describe())
    std::fprintf(stderr, "warning: the checkpoint was trained on %s; continuing on %s\n",
                 c["data"].dump().c_str(), data.describe().c_str());
  std::fflush(stdout);
  return next;
}

// The reference GPT: one ds::Gpt, or with pipeline.stages > 1 this stage's part of the same
// model as a PipelineModule (the same initial weights, so every layout trains alike).
struct Model {
  ds::Gpt gpt{nullptr};
  ds::pipe::PipelineModule pipe{nullptr};
  ds::tp::Group tensor;  // tensor_parallel.autotp_size > 1: each rank holds a slice of every layer
  ds::seq::Group sequence;  // sequence_parallel_size > 1: each rank takes a slice of every sequence
  std::shared_ptr<torch::nn::Module> module() {
    if (pipe) return pipe.ptr();
    return gpt.ptr();
  }
  ds::pipe::StageModel stage_model() {
    return pipe->stage_model(
        [t = tensor, s = sequence](const at::Tensor& out, const at::Tensor& y) { return ds::gpt_loss(out, y, t, s); });
  }
  // Logits of whole sequences on every rank (collective over the pipe, tensor and sequence
  // groups): each rank of a sequence group computes its slice.
  at::Tensor logits(ds::Engine& engine, const at::Tensor& tokens) {
    const at::Tensor mine = slice({tokens, at::zeros_like(tokens)}).tokens;
    at::Tensor out = pipe ? ds::tp::gather_from(engine.forward_pipeline(stage_model(), mine), tensor) : gpt->forward(mine);
    return ds::seq::gather(out, sequence, 1).narrow(1, 0, tokens.size(1));  // without the padding
  }
  // This rank's part of an example batch: its slice of the sequences, padded to a multiple of
  // the sequence group's size.
  ds::Batch slice(ds::Batch b) const {
    return sequence ? ds::sequence_slice(std::move(b), sequence->rank(), sequence->size()) : b;
  }
};

struct Curve {
  std::vector<double> steps, losses;
  double tokens = 0, seconds = 0;
};

// Steps first .. a.steps-1 (0-based), with evaluations and checkpoints on the way.
Curve train(const Args& a, ds::Engine& engine, Model& model, const RunIdentity& run, int64_t first,
            const std::function<void(int64_t)>& evaluate) {
  const ds::Dataset& data = *run.data;
  const ds::Config& config = engine.config();
  const int64_t micro = config.train_micro_batch_size_per_gpu, gas = config.gradient_accumulation_steps;
  Curve curve;
  int64_t saved_at = a.load.empty() ? -1 : first;  // a resumed run's first step is saved already
  for (int64_t step = first; step < a.steps; ++step) {
    // Example indices in the global batch: micro-batch m of data-parallel rank r covers
    // [(m*N + r)*micro, +micro) (the ranks of one model replica read the same examples, the
    // ranks of one sequence group too, each its slice of them).
    auto micro_batch = [&](int64_t m) {
      return model.slice(data.batch(step, (m * engine.sample_ranks() + engine.sample_rank()) * micro, micro));
    };
    std::optional<ds::StepStats> stats;
    if (model.pipe) {
      stats = engine.train_batch(model.stage_model(), [&](int m) {
        ds::Batch b = micro_batch(m);
        return ds::pipe::MicroBatch{b.tokens, b.targets};
      });
    } else {
      for (int64_t m = 0; m < gas; ++m) {
        ds::Batch b = micro_batch(m);
        at::Tensor loss = engine.forward([&] { return model.gpt->loss(b.tokens, b.targets); });
        engine.backward(loss);
      }
      stats = engine.step();
    }
    DS_CHECK(stats.has_value(), "no optimizer step at the end of an accumulation window");
    curve.steps.push_back(double(stats->step));
    curve.losses.push_back(stats->loss);
    if (step > first) {  // the first step warms up
      curve.tokens += double(config.train_batch_size * data.context());
      curve.seconds += stats->seconds;
    }
    if (a.eval_interval > 0 && (step + 1) % a.eval_interval == 0 && step + 1 < a.steps) evaluate(step + 1);
    if (!a.save.empty() && a.save_interval > 0 && (step + 1) % a.save_interval == 0) {
      save_checkpoint(engine, a.save, run);
      saved_at = step + 1;
    }
  }
  if (!a.save.empty() && saved_at != engine.global_step()) save_checkpoint(engine, a.save, run);
  return curve;
}

void print_start(const ds::GptConfig& mc, const ds::Dataset& data, const ds::Engine& engine, Model& model) {
  const ds::Config& config = engine.config();
  std::printf(
      "ds-train: %s\nds-train: %s\nds-train: %s\nds-train: %d ranks x micro-batch %lld x accumulation %lld = global "
      "batch %lld; ZeRO stage %d, %s, %s, %s\n",
      mc.describe().c_str(), mc.describe_attention().c_str(), data.describe().c_str(), engine.groups().world->size(),
      (long long)config.train_micro_batch_size_per_gpu, (long long)config.gradient_accumulation_steps,
      (long long)config.train_batch_size, engine.zero_stage(), engine.precision().name.c_str(),
      config.optimizer.type == ds::OptimizerType::kNone ? "?" : ds::optimizer_type_name(config.optimizer.type),
      config.scheduler.type == ds::SchedulerType::kNone ? "constant lr" : ds::scheduler_type_name(config.scheduler.type));
  const ds::comm::ParallelGroups& g = engine.groups();
  std::printf("ds-train: layout %s%s\n", g.topology.describe().c_str(),
              g.pipe->size() > 1 ? ds::str(" (1F1B over ", config.gradient_accumulation_steps, " micro-batches; ",
                                           config.pipeline.partition, " partition)").c_str()
                                 : "");
  if (model.pipe)
    for (int s = 0; s < g.pipe->size(); ++s) std::printf("ds-train:   %s\n", model.pipe->describe_stage(s).c_str());
  if (const int s = g.sequence->size(); s > 1)
    std::printf("ds-train: Ulysses sequence parallelism: each of %d ranks takes %lld of every %lld tokens and computes "
                "attention over all of them for %lld of %lld heads\n",
                s, (long long)((data.context() + s - 1) / s), (long long)data.context(),
                (long long)(mc.n_head / g.tensor->size() / s), (long long)mc.n_head);
  if (mc.dropout > 0.0 || mc.checkpoint_blocks > 0)
    std::printf("ds-train: dropout %g; %lld of %lld blocks recomputed in the backward (activation checkpointing)\n",
                mc.dropout, (long long)mc.checkpoint_blocks, (long long)mc.n_layer);
  std::fflush(stdout);
}

void init_weights(const std::string& path, ds::Engine& engine, Model& model, const ds::GptConfig& mc) {
  const bool rank0 = engine.comm().rank() == 0;
  if (rank0) std::printf("ds-train: loading GPT-2 weights from %s ...\n", path.c_str()), std::fflush(stdout);
  const auto start = std::chrono::steady_clock::now();
  if (!model.gpt) throw ds::ConfigError("--init loads into the whole GPT: run it without pipeline stages");
  ds::load_gpt2_safetensors(engine, *model.gpt, path, mc);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (rank0) std::printf("ds-train: loaded %s (%.2f s)\n", path.c_str(), s), std::fflush(stdout);
}

void report(const Args& a, const ds::Config& config, ds::comm::Communicator& comm, const ds::Dataset& data,
            const Curve& curve, const Evaluation& eval) {
  char loss[64] = "no steps trained";
  if (!curve.losses.empty()) std::snprintf(loss, sizeof loss, "final loss %.4f", curve.losses.back());
  // The first step of a run warms up and is not timed: a run of one step has no speed.
  const std::string speed = curve.seconds > 0 ? ds::str(int64_t(curve.tokens / curve.seconds), " tokens/s")
                                              : std::string("tokens/s n/a (only the untimed first step ran)");
  std::printf("ds-train: done: %lld steps, %s, %s %.4f, %s, peak RSS %s per rank\n", (long long)a.steps, loss,
              eval.name.c_str(), eval.values.back(), speed.c_str(), ds::format_bytes(double(ds::peak_rss_bytes())).c_str());
  ds::LineChart chart{
      ds::str("ds-train: ", a.data.empty() ? "task " + a.task : a.data, " (", comm.size(), " ranks)"),
      "step",
      "training loss (global batch mean)",
      data.has_answers() ? eval.name : "",
      {},
      /*log_y=*/true};
  chart.series.push_back({"training loss", "#1f77b4", curve.steps, curve.losses, false});
  chart.series.push_back({eval.name, "#d62728", eval.steps, eval.values, data.has_answers()});
  if (!a.plot.empty()) {
    ds::write_svg(chart, a.plot);
    std::printf("ds-train: loss curve written to %s\n", a.plot.c_str());
  }
  if (config.comms_logger.enabled)
    std::printf("ds-train: communication summary\n%s", comm.logger().summary(comm.size()).c_str());
}

// What would otherwise fail only after training: the checkpoint directory (every rank writes
// its part; created now) and the loss curve's directory (rank 0).
void check_outputs(const Args& a, bool rank0) {
  auto writable = [](const std::string& dir, const char* flag) {
    std::error_code ec;
    if (std::filesystem::exists(dir, ec) && !std::filesystem::is_directory(dir, ec))
      throw ds::ConfigError(ds::str(flag, " ", dir, ": exists and is not a directory"));
    if (std::strcmp(flag, "--save") == 0) std::filesystem::create_directories(dir, ec);
    if (!std::filesystem::is_directory(dir, ec))
      throw ds::ConfigError(ds::str(flag, ": directory ", dir, " does not exist", ec ? " and cannot be created: " + ec.message() : ""));
    const std::string probe = ds::str(dir, "/.ds-write-test", ds::owner_tag());
    std::FILE* f = std::fopen(probe.c_str(), "w");
    if (!f) throw ds::ConfigError(ds::str(flag, ": cannot write in ", dir, ": ", std::strerror(errno)));
    std::fclose(f);
    std::remove(probe.c_str());
  };
  if (!a.save.empty()) writable(a.save, "--save");
  if (rank0 && !a.plot.empty()) {
    const std::string parent = std::filesystem::path(a.plot).parent_path().string();
    writable(parent.empty() ? "." : parent, "--plot");
  }
}

// With an activation_checkpointing section: every block (or the first number_checkpoints) is
// recomputed in the backward. A pipeline checkpoints by pipeline.activation_checkpoint_interval.
int64_t checkpoint_blocks(const ds::Config& config, const ds::GptConfig& mc) {
  const ds::ActivationCheckpointingConfig& a = config.activation_checkpointing;
  if (!a.present || config.pipeline.stages > 1) return 0;
  if (a.number_checkpoints && *a.number_checkpoints > mc.n_layer)
    throw ds::ConfigError(ds::str("activation_checkpointing.number_checkpoints is ", *a.number_checkpoints,
                                  " but the model has ", mc.n_layer, mc.n_layer == 1 ? " block" : " blocks",
                                  " to checkpoint: give at most ", mc.n_layer));
  return a.number_checkpoints.value_or(mc.n_layer);
}

// A micro-batch whose activations cannot fit is refused before minutes of set-up.
// Sequence parallelism divides every activation, attention's included, by its size.
void check_memory(const ds::GptConfig& mc, const ds::Config& config) {
  const double need = mc.activation_bytes(config.train_micro_batch_size_per_gpu, mc.seq_len) /
                      double(config.parallel.sequence_parallel_size);
  const double have = double(::sysconf(_SC_PHYS_PAGES)) * double(::sysconf(_SC_PAGESIZE));
  if (need > have)
    throw ds::ConfigError(ds::str("a micro-batch of ", config.train_micro_batch_size_per_gpu, " x ", mc.seq_len,
                                  " tokens needs about ", ds::format_bytes(need), " of activations, more than this "
                                  "machine's ", ds::format_bytes(have), ": lower train_micro_batch_size_per_gpu "
                                  "(raise gradient_accumulation_steps to keep the global batch)"));
}

// The contexts a checkpoint under `dir` was trained with: the model's and the examples'
// (0 when it cannot tell: resume() then names what is wrong with the checkpoint).
struct Contexts {
  int64_t model = 0, data = 0;
};
Contexts checkpoint_contexts(const std::string& dir) {
  Contexts out;
  try {
    const ds::ckpt::CheckpointReader reader(dir);
    const nlohmann::json& c = reader.engine_state().client;
    if (c.contains("gpt") && c["gpt"].is_object() && c["gpt"].contains("seq_len") && c["gpt"]["seq_len"].is_number_integer())
      out.model = c["gpt"]["seq_len"].get<int64_t>();
    out.data = c.contains("context") && c["context"].is_number_integer() ? c["context"].get<int64_t>() : out.model;
  } catch (const std::exception&) {
  }
  return out;
}

bool is_token_data(const Args& a) {
  return a.data_format == "llmc" || a.data_format == "nanogpt" ||
         (a.data_format == "auto" && a.data.size() > 4 && a.data.compare(a.data.size() - 4, 4, ".bin") == 0);
}

// --init: what the command line leaves open comes from the weights (and the config.json beside
// them); the head count cannot come from weights, so without either it is an error.
void shapes_from_init(Args& a) {
  const ds::Gpt2FileShapes f = ds::gpt2_file_shapes(a.init);
  auto take = [&](const char* option, int64_t& field, int64_t value) {
    if (!a.given.count(option)) field = value;
  };
  take("--n-layer", a.n_layer, f.n_layer), take("--d-model", a.d_model, f.d_model);
  take("--seq-len", a.seq_len, f.seq_len);
  if (!a.given.count("--activation")) a.activation = f.activation;
  if (!a.given.count("--n-head")) {
    if (f.n_head <= 0)
      throw ds::ConfigError(ds::str("--init ", a.init, ": the weights do not say how many attention heads the model has ",
                                    "and there is no config.json beside them: give --n-head (GPT-2: 12 for 124M)"));
    a.n_head = f.n_head;
  }
  if (!is_token_data(a)) {
    if (f.vocab_size != 256)
      throw ds::ConfigError(ds::str("--init ", a.init, " has a vocabulary of ", f.vocab_size, " tokens but --data ",
                                    a.data.empty() ? "(a synthetic task)" : a.data, " is bytes (256): train it on a ",
                                    "token file made with its tokenizer (--data X.bin)"));
  } else if (!a.given.count("--vocab-size")) {
    a.vocab_size = f.vocab_size;
  }
}

// A text file (bytes), a token file (.bin, or a token --data-format) or an embedded task.
std::unique_ptr<ds::Dataset> open_data(const Args& a, uint64_t seed) {
  const bool tokens = is_token_data(a);
  if ((!a.val_data.empty() || a.vocab_size > 0) && !tokens)
    throw ds::ConfigError("--val-data and --vocab-size are for token files (.bin, or --data-format llmc / nanogpt)");
  if (a.data.empty()) return ds::make_task(a.task, seed);
  const int64_t context = a.seq_len > 0 ? a.seq_len : 64;
  if (!tokens) return ds::TextDataset::open(a.data, context, seed);
  ds::TokenDataset::Options o;
  o.path = a.data, o.val_path = a.val_data, o.context = context, o.seed = seed, o.vocab_size = a.vocab_size;
  o.format = a.data_format == "llmc" ? ds::TokenDataset::Format::kLlmc
             : a.data_format == "nanogpt" ? ds::TokenDataset::Format::kNanoGpt
                                          : ds::TokenDataset::Format::kAuto;
  return ds::TokenDataset::open(o);
}

int run(Args a) {
  int local = std::max(1, env_int("LOCAL_WORLD_SIZE", 1));
  at::set_num_threads(a.threads > 0 ? int(a.threads) : std::max(1, int(::sysconf(_SC_NPROCESSORS_ONLN)) / local));
  auto comm = ds::comm::init_from_env();
  const bool rank0 = comm->rank() == 0;

  ds::Config config = a.config.empty() ? ds::Config::parse(kDefaultConfig, "default config") : ds::Config::load(a.config);
  ds::ResolveOptions ro;
  ro.world_size = comm->size();
  ro.total_num_steps = a.steps;
  config.resolve(ro);
  if (rank0)
    for (const auto& w : config.warnings()) std::fprintf(stderr, "warning: %s\n", w.c_str());
  const uint64_t seed = a.seed >= 0 ? uint64_t(a.seed) : uint64_t(config.seed);
  check_outputs(a, rank0);
  if (!a.init.empty()) shapes_from_init(a);

  // Without --seq-len a resumed run keeps its checkpoint's contexts: the model's and, for a
  // file, the examples' (the default otherwise depends on sequence_parallel_size, below).
  const Contexts resumed = a.seq_len > 0 || a.load.empty() ? Contexts{} : checkpoint_contexts(a.load);
  Args opened = a;
  if (resumed.data > 0 && !a.data.empty()) opened.seq_len = resumed.data;
  std::unique_ptr<ds::Dataset> data = open_data(opened, seed);
  ds::GptConfig mc;
  mc.n_layer = a.n_layer, mc.n_head = a.n_head, mc.d_model = a.d_model, mc.vocab_size = data->vocab_size();
  // Sequence parallelism pads the examples to a multiple of its size (at the end, no loss
  // there), so the default model context depends on it.
  const int64_t sp = config.parallel.sequence_parallel_size;
  const int64_t padded = (data->context() + sp - 1) / sp * sp;
  mc.seq_len = a.seq_len > 0 ? a.seq_len : resumed.model > 0 ? resumed.model : padded;
  if (mc.seq_len < padded) {
    const bool other_data = resumed.model > 0 && resumed.model < data->context();
    throw ds::ConfigError(ds::str(resumed.model > 0 ? "the checkpoint's context " : "--seq-len ", mc.seq_len,
                                  " is shorter than the task's examples (", data->context(), " tokens",
                                  padded > data->context() ? ds::str(", padded to ", padded, " to split over ", sp,
                                                                     " sequence-parallel ranks")
                                                           : std::string(),
                                  other_data            ? "); resume on the data it was trained on"
                                  : resumed.model > 0   ? "); resume with a sequence_parallel_size that divides it"
                                                        : ds::str("); use --seq-len ", padded, " or more")));
  }
  mc.dropout = a.dropout;
  mc.dense_attention = a.dense_attention;
  mc.activation = a.activation;
  mc.sparse = config.sparse_attention;  // block-sparse attention in every block
  mc.sparse_seed = seed;
  mc.checkpoint_blocks = checkpoint_blocks(config, mc);
  mc.validate();
  check_memory(mc, config);
  torch::manual_seed(seed);
  ds::comm::ParallelGroups groups = ds::parallel_groups(comm, config);
  if (!a.init.empty() && (groups.pipe->size() > 1 || groups.tensor->size() > 1))
    throw ds::ConfigError("--init loads GPT-2 weights with data parallelism only (any ZeRO stage): drop the pipeline and "
                          "tensor_parallel sections, save a checkpoint, and resume it with them");
  ds::zero::Init init(groups.data, config);  // ZeRO stage 3: each unit is sharded as soon as it is built
  Model model;
  if (groups.tensor->size() > 1) model.tensor = groups.tensor;
  if (groups.sequence->size() > 1) model.sequence = groups.sequence;
  if (groups.pipe->size() > 1)
    model.pipe = ds::pipe::PipelineModule(ds::gpt_layer_specs(mc, model.tensor, model.sequence),
                                          ds::pipe::PipelineLayout::from(config, groups));
  else
    model.gpt = ds::Gpt(mc, model.tensor, model.sequence);
  ds::EngineOptions options;
  options.sharded_units = init.take_units();
  options.skip_nonfinite_steps = a.skip_nonfinite;
  ds::Engine engine(model.module(), config, groups, std::move(options));
  engine.set_tokens_per_step(config.train_batch_size * data->context());
  engine.set_total_steps(a.steps);
  if (!a.metrics.empty()) engine.set_metrics_csv(a.metrics);
  if (rank0) print_start(mc, *data, engine, model);
  if (!a.init.empty() && a.load.empty()) init_weights(a.init, engine, model, mc);
  const RunIdentity run{seed, data.get(), mc};
  const int64_t first = a.load.empty() ? 0 : resume(engine, a.load, run);
  if (rank0 && first >= a.steps)
    std::printf("ds-train: the checkpoint is at step %lld, --steps is %lld: nothing to train\n",
                (long long)first, (long long)a.steps);
  const ds::FlopsProfilerConfig& fp = config.flops_profiler;
  if (rank0 && fp.enabled && (fp.profile_step >= a.steps || fp.profile_step < first))
    std::fprintf(stderr, "warning: flops_profiler.profile_step %lld is outside this run (steps %lld to %lld are "
                         "trained; profile_step counts completed steps): no profile will be taken\n",
                 (long long)fp.profile_step, (long long)first, (long long)a.steps - 1);

  Evaluation eval;
  eval.name = data->has_answers() ? "held-out accuracy" : "held-out loss";
  auto evaluate = [&](int64_t step) {
    torch::NoGradGuard no_grad;
    double v = data->has_answers()
                   ? ds::exact_match_accuracy(*data, [&](const at::Tensor& t) { return model.logits(engine, t); }, a.eval_examples)
                   : ds::held_out_loss(*data, [&](const at::Tensor& t, const at::Tensor& y) {
                       return ds::gpt_loss(model.logits(engine, t), y);  // the gathered logits
                     }, a.eval_examples);
    eval.steps.push_back(double(step));
    eval.values.push_back(v);
    if (rank0) std::printf("ds-train: step %lld %s %.4f\n", (long long)step, eval.name.c_str(), v), std::fflush(stdout);
  };
  Curve curve = train(a, engine, model, run, first, evaluate);
  evaluate(std::max(a.steps, first));
  if (rank0) report(a, config, *comm, *data, curve, eval);
  comm->barrier().wait();
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  ds::ensure_passive_openmp(argv);
  Args args = parse(argc, argv);
  try {
    return run(args);
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "ds-train: error: out of memory: lower train_micro_batch_size_per_gpu, --seq-len or the "
                         "model size, or shard more (ZeRO stage 3, offload)\n");
    return 1;
  } catch (const std::exception& e) {
    std::string msg = e.what();
    std::fprintf(stderr, "ds-train: error: %s\n", msg.substr(0, msg.find('\n')).c_str());
    return 1;
  }
}
