// ds-train: trains the reference GPT with the engine, on an embedded synthetic task (no
// files needed) or on any text file as bytes. Start it under ds-launch for several ranks.
//
//   ds-launch --num_procs 2 ds-train --task reverse --steps 400
//   ds-train --config ds_config.json --data input.txt --n-layer 4 --n-head 4 --d-model 256 --seq-len 128
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <CLI/CLI.hpp>
#include <torch/utils.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <iostream>

#include "ds/comm/communicator.h"
#include "ds/common/error.h"
#include "ds/common/openmp_env.h"
#include "ds/common/plot.h"
#include "ds/common/strings.h"
#include "ds/config/config.h"
#include "ds/data/dataset.h"
#include "ds/models/gpt.h"
#include "ds/runtime/engine.h"

namespace {

// Used when no --config is given: AdamW with warm-up and linear decay, clipping, ZeRO stage 2.
const char* kDefaultConfig = R"({
  "train_batch_size": 64,
  "gradient_accumulation_steps": 1,
  "optimizer": {"type": "AdamW", "params": {"lr": 0.003, "betas": [0.9, 0.98], "weight_decay": 0.01}},
  "scheduler": {"type": "WarmupDecayLR",
                "params": {"warmup_min_lr": 0.0, "warmup_max_lr": 0.003, "warmup_num_steps": 50,
                           "warmup_type": "linear", "total_num_steps": "auto"}},
  "gradient_clipping": 1.0,
  "steps_per_print": 50,
  "zero_optimization": {"stage": 2, "overlap_comm": true}
})";

struct Args {
  std::string config, data, task = "reverse", metrics, plot = "ds-train-loss.svg";
  int64_t steps = 600, eval_interval = 100, eval_examples = 512, seed = -1, threads = 0;
  int64_t n_layer = 2, n_head = 4, d_model = 128, seq_len = 0;
};

Args parse(int argc, char** argv) {
  Args a;
  CLI::App app{"ds-train: train the reference GPT with deepspeed.cpp (run under ds-launch for several ranks)"};
  app.add_option("--config", a.config, "ds_config.json (default: an embedded AdamW + WarmupDecayLR config)");
  app.add_option("--data", a.data, "train on this text file (bytes) instead of a synthetic task");
  app.add_option("--task", a.task, "embedded synthetic task: reverse | add")->capture_default_str();
  app.add_option("--steps", a.steps, "optimizer steps")->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--n-layer", a.n_layer, "transformer blocks")->capture_default_str();
  app.add_option("--n-head", a.n_head, "attention heads")->capture_default_str();
  app.add_option("--d-model", a.d_model, "model width")->capture_default_str();
  app.add_option("--seq-len", a.seq_len, "context length (default: the task's, or 64 for text)");
  app.add_option("--seed", a.seed, "seed for weights and data order (default: the config's seed)");
  app.add_option("--metrics", a.metrics, "write per-step metrics to this CSV (rank 0)");
  app.add_option("--plot", a.plot, "loss-curve picture (SVG) written at the end")->capture_default_str();
  app.add_option("--eval-interval", a.eval_interval, "evaluate held-out data every N steps (0: only at the end)")->capture_default_str();
  app.add_option("--eval-examples", a.eval_examples, "held-out examples per evaluation")->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--threads", a.threads, "intra-op threads per rank (default: cores / local ranks)");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    std::exit(app.exit(e));
  }
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

int run(const Args& a) {
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

  std::unique_ptr<ds::Dataset> data;
  if (!a.data.empty()) data = ds::TextDataset::open(a.data, a.seq_len > 0 ? a.seq_len : 64, seed);
  else data = ds::make_task(a.task, seed);
  ds::GptConfig mc;
  mc.n_layer = a.n_layer, mc.n_head = a.n_head, mc.d_model = a.d_model;
  mc.seq_len = a.seq_len > 0 ? a.seq_len : data->context();
  if (mc.seq_len < data->context())
    throw ds::ConfigError(ds::str("--seq-len ", mc.seq_len, " is shorter than the task's examples (", data->context(),
                                  " tokens); use --seq-len ", data->context(), " or more"));
  mc.validate();
  torch::manual_seed(seed);
  ds::Gpt model(mc);
  ds::Engine engine(model.ptr(), config, comm);
  const int64_t micro = config.train_micro_batch_size_per_gpu, gas = config.gradient_accumulation_steps;
  const int64_t global_batch = config.train_batch_size;
  engine.set_tokens_per_step(global_batch * data->context());
  if (!a.metrics.empty()) engine.set_metrics_csv(a.metrics);
  if (rank0)
    std::printf("ds-train: %s\nds-train: %s\nds-train: %d ranks x micro-batch %lld x accumulation %lld = global batch %lld; %s, %s, %s\n",
                mc.describe().c_str(), data->describe().c_str(), comm->size(), (long long)micro, (long long)gas,
                (long long)global_batch, ds::to_string(engine.precision()), config.optimizer.type == ds::OptimizerType::kNone ? "?" : ds::optimizer_type_name(config.optimizer.type),
                engine.config().scheduler.type == ds::SchedulerType::kNone ? "constant lr" : ds::scheduler_type_name(config.scheduler.type));

  Evaluation eval;
  eval.name = data->has_answers() ? "held-out accuracy" : "held-out loss";
  auto evaluate = [&](int64_t step) {
    torch::NoGradGuard no_grad;
    double v = data->has_answers()
                   ? ds::exact_match_accuracy(*data, [&](const at::Tensor& t) { return model->forward(t); }, a.eval_examples)
                   : ds::held_out_loss(*data, [&](const at::Tensor& t, const at::Tensor& y) { return model->loss(t, y); }, a.eval_examples);
    eval.steps.push_back(double(step));
    eval.values.push_back(v);
    if (rank0) std::printf("ds-train: step %lld %s %.4f\n", (long long)step, eval.name.c_str(), v), std::fflush(stdout);
  };

  std::vector<double> steps, losses;
  double tokens = 0, seconds = 0;
  for (int64_t step = 0; step < a.steps; ++step) {
    for (int64_t m = 0; m < gas; ++m) {
      // Example indices in the global batch: micro-batch m of rank r covers [(m*N + r)*micro, +micro).
      ds::Batch b = data->batch(step, (m * comm->size() + comm->rank()) * micro, micro);
      at::Tensor loss = engine.forward([&] { return model->loss(b.tokens, b.targets); });
      engine.backward(loss);
    }
    auto stats = engine.step();
    DS_CHECK(stats.has_value(), "no optimizer step at the end of an accumulation window");
    steps.push_back(double(stats->step));
    losses.push_back(stats->loss);
    if (step > 0) tokens += double(global_batch * data->context()), seconds += stats->seconds;  // step 0 warms up
    if (a.eval_interval > 0 && (step + 1) % a.eval_interval == 0 && step + 1 < a.steps) evaluate(step + 1);
  }
  evaluate(a.steps);
  if (rank0) {
    std::printf("ds-train: done: %lld steps, final loss %.4f, %s %.4f, %.0f tokens/s, peak RSS %s per rank\n",
                (long long)a.steps, losses.back(), eval.name.c_str(), eval.values.back(), seconds > 0 ? tokens / seconds : 0.0,
                ds::format_bytes(double(ds::peak_rss_bytes())).c_str());
    ds::LineChart chart{ds::str("ds-train: ", a.data.empty() ? "task " + a.task : a.data, " (", comm->size(), " ranks)"),
                        "step", "training loss (global batch mean)", data->has_answers() ? eval.name : "", {}};
    chart.series.push_back({"training loss", "#1f77b4", steps, losses, false});
    chart.series.push_back({eval.name, "#d62728", eval.steps, eval.values, data->has_answers()});
    if (!a.plot.empty()) {
      ds::write_svg(chart, a.plot);
      std::printf("ds-train: loss curve written to %s\n", a.plot.c_str());
    }
    if (config.comms_logger.enabled) std::printf("ds-train: communication summary\n%s", comm->logger().summary(comm->size()).c_str());
  }
  comm->barrier().wait();
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  ds::ensure_passive_openmp(argv);
  Args args = parse(argc, argv);
  try {
    return run(args);
  } catch (const std::exception& e) {
    std::string msg = e.what();
    std::fprintf(stderr, "ds-train: error: %s\n", msg.substr(0, msg.find('\n')).c_str());
    return 1;
  }
}
