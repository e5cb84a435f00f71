// Engine::train_batch over pipeline stages x data-parallel replicas: the losses and the weights
// after 6 steps (gradient accumulation, clipping by the global norm over all stages) must equal
// a plain LibTorch loop over the whole model and a 1-process engine run.
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <torch/torch.h>

#include "ds/comm/topology.h"
#include "ds/common/error.h"
#include "ds/runtime/engine.h"
#include "support/errors.h"
#include "support/ranks.h"

namespace ds {
namespace {

constexpr int kLayers = 8, kWidth = 12, kRows = 3, kSteps = 6, kAccum = 4;  // kAccum micro-batches per data rank
constexpr double kLr = 0.2, kClip = 0.05;

std::vector<torch::nn::Linear> all_layers() {
  torch::manual_seed(99);
  std::vector<torch::nn::Linear> layers;
  for (int i = 0; i < kLayers; ++i) layers.emplace_back(kWidth, kWidth);
  return layers;
}

// One stage's part of the model: layers [first, last) under their global names.
struct Stack : torch::nn::Module {
  std::vector<torch::nn::Linear> layers;
  Stack(int first, int last) {
    auto all = all_layers();
    for (int i = first; i < last; ++i) layers.push_back(register_module(ds::str("layer", i), all[size_t(i)]));
  }
  at::Tensor forward(at::Tensor x) {
    for (auto& l : layers) x = at::tanh(l->forward(x));
    return x;
  }
};

// Micro-batch i of step t in the global batch order (data rank d's i-th is d * kAccum + i).
pipe::MicroBatch sample(int step, int i) {
  const double f = 0.1 + 0.07 * i + 0.013 * step;
  at::Tensor x = at::sin(at::arange(kRows * kWidth, at::kFloat).reshape({kRows, kWidth}) * f);
  at::Tensor y = at::cos(at::arange(kRows * kWidth, at::kFloat).reshape({kRows, kWidth}) * (0.5 * f)) * 0.5;
  return {x, y};
}

at::Tensor mse(const at::Tensor& out, const at::Tensor& y) { return (out - y).pow(2).mean(); }

struct TrainRun {
  std::vector<double> losses;
  std::vector<at::Tensor> weights;  // per global layer; undefined where this rank holds none
  int clipped = 0;
};

// The plain loop: the whole model, SGD, mean over the global batch, clipping by the global norm.
TrainRun plain_loop(int micro_batches) {
  auto layers = all_layers();
  TrainRun r;
  for (int t = 0; t < kSteps; ++t) {
    double loss = 0;
    for (int i = 0; i < micro_batches; ++i) {
      pipe::MicroBatch b = sample(t, i);
      at::Tensor h = b.inputs;
      for (auto& l : layers) h = at::tanh(l->forward(h));
      at::Tensor li = mse(h, b.labels);
      loss += li.item<double>() / micro_batches;
      (li / double(micro_batches)).backward();
    }
    r.losses.push_back(loss);
    double sq = 0;
    for (auto& l : layers)
      for (auto& p : l->parameters()) sq += p.grad().pow(2).sum().item<double>();
    const double coef = kClip / (std::sqrt(sq) + 1e-6);
    torch::NoGradGuard no_grad;
    for (auto& l : layers)
      for (auto& p : l->parameters()) {
        if (coef < 1) p.grad().mul_(coef);
        p.sub_(p.grad() * kLr);
        p.grad().zero_();
      }
    r.clipped += coef < 1;
  }
  for (auto& l : layers) r.weights.push_back(l->weight.detach().clone());
  return r;
}

std::string config(int pipe, int data, int zero, int accum = kAccum) {
  return ds::str(R"({"train_batch_size": )", kRows * accum * data, R"(, "train_micro_batch_size_per_gpu": )", kRows,
                 R"(, "optimizer": {"type": "SGD", "params": {"lr": )", kLr, R"(}}, "gradient_clipping": )", kClip,
                 R"(, "zero_optimization": {"stage": )", zero, R"(}, "pipeline": {"stages": )", pipe, "}}");
}

TrainRun engine_run(comm::Communicator& world, int pipe, int zero, int accum = kAccum) {
  const int data = world.size() / pipe;
  comm::ParallelGroups groups =
      comm::ParallelGroups::create(world.shared_from_this(), comm::Topology::for_world(world.size(), pipe, 1));
  Config cfg = Config::parse(config(pipe, data, zero, accum), "test config");
  cfg.resolve(world.size());
  const int stage = groups.coord.pipe, dp = groups.coord.data;
  const int first = stage * kLayers / pipe, last = (stage + 1) * kLayers / pipe;
  auto model = std::make_shared<Stack>(first, last);
  Engine engine(model, cfg, groups);
  TrainRun r;
  for (int t = 0; t < kSteps; ++t) {
    pipe::StageModel sm{[&](int, const at::Tensor& x) { return model->forward(x); }, mse};
    const StepStats s = engine.train_batch(sm, [&](int i) { return sample(t, dp * accum + i); });
    r.losses.push_back(s.loss);
  }
  r.weights.resize(kLayers);
  for (int i = first; i < last; ++i) r.weights[size_t(i)] = model->layers[size_t(i - first)]->weight.detach().clone();
  return r;
}

void expect_same(const TrainRun& got, const TrainRun& want, const std::string& what) {
  ASSERT_EQ(got.losses.size(), want.losses.size()) << what;
  for (size_t t = 0; t < want.losses.size(); ++t) EXPECT_NEAR(got.losses[t], want.losses[t], 1e-5) << what << " step " << t;
  int compared = 0;
  for (size_t i = 0; i < got.weights.size(); ++i) {
    if (!got.weights[i].defined()) continue;
    ++compared;
    EXPECT_LT((got.weights[i] - want.weights[i]).abs().max().item<double>(), 1e-5) << what << " layer " << i;
  }
  EXPECT_GT(compared, 0) << what;
}

TEST(PipelineEngine, LayoutsMatchAPlainLoopAndOneProcess) {
  struct Layout { int world, pipe; };
  for (Layout l : {Layout{2, 2}, Layout{4, 4}, Layout{4, 2}, Layout{2, 1}}) {
    test::run_ranks(l.world, [&](comm::Communicator& world) {
      const int data = l.world / l.pipe;
      const TrainRun plain = plain_loop(kAccum * data);
      ASSERT_GT(plain.clipped, 0) << "clipping never triggered: the global norm over the stages would go unchecked";
      // One process, the same global batch as kAccum micro-batches on each of `data` ranks.
      comm::GlooOptions solo;
      std::shared_ptr<comm::Communicator> one = comm::make_gloo(solo);
      const TrainRun single = engine_run(*one, 1, 0, kAccum * data);
      expect_same(single, plain, "1 process");
      for (int zero : {0, 1}) {
        const std::string what = ds::str("pipe ", l.pipe, " x data ", data, ", ZeRO ", zero, ", rank ", world.rank());
        const TrainRun got = engine_run(world, l.pipe, zero);
        expect_same(got, plain, what + " vs the plain loop");
        expect_same(got, single, what + " vs 1 process");
      }
    });
  }
}

TEST(PipelineEngine, EvalBatchIsTheMeanLossOfThePlainForwardEverywhere) {
  test::run_ranks(4, [](comm::Communicator& world) {
    for (int pipe : {1, 2, 4}) {
      const int data = 4 / pipe, m = 3;
      comm::ParallelGroups groups =
          comm::ParallelGroups::create(world.shared_from_this(), comm::Topology::for_world(4, pipe, 1));
      Config cfg = Config::parse(config(pipe, data, 1), "test config");
      cfg.resolve(4);
      const int stage = groups.coord.pipe, dp = groups.coord.data;
      auto model = std::make_shared<Stack>(stage * kLayers / pipe, (stage + 1) * kLayers / pipe);
      Engine engine(model, cfg, groups);
      pipe::StageModel sm{[&](int, const at::Tensor& x) { return model->forward(x); }, mse};
      const double got = engine.eval_batch(sm, [&](int i) { return sample(7, dp * m + i); }, m);
      Stack whole(0, kLayers);  // the plain forward over all data ranks' micro-batches
      double want = 0;
      for (int i = 0; i < m * data; ++i) want += mse(whole.forward(sample(7, i).inputs), sample(7, i).labels).item<double>();
      EXPECT_NEAR(got, want / (m * data), 1e-6) << "pipe " << pipe << ", rank " << world.rank();
      for (auto& p : model->parameters()) EXPECT_FALSE(p.grad().defined() && p.grad().abs().sum().item<double>() > 0);
    }
  });
}

TEST(PipelineEngine, BadLayoutsAreRefusedAtStartUp) {
  test::run_ranks(2, [](comm::Communicator& world) {
    // ZeRO-2 with pipeline stages: DeepSpeed's restriction, from the config.
    EXPECT_ERROR_HAS(Config::parse(config(2, 1, 2), "c").resolve(2), "cannot be combined with 2 pipeline stages");
    // The config's stages must be the pipe group's size.
    Config cfg = Config::parse(config(2, 1, 0), "c");
    cfg.resolve(2);
    auto model = std::make_shared<Stack>(0, 4);
    EXPECT_ERROR_HAS(Engine(model, cfg, world.shared_from_this()), "pipeline.stages is 2 but the pipe group has 1 ranks");
    comm::ParallelGroups groups = comm::ParallelGroups::create(world.shared_from_this(), comm::Topology::for_world(2, 2, 1));
    auto stage = std::make_shared<Stack>(world.rank() * 4, world.rank() * 4 + 4);
    Engine engine(stage, cfg, groups);
    // The plain loop's calls would run each stage's layers as if they were the model.
    at::Tensor loss = engine.forward([&] { return mse(stage->forward(at::ones({kRows, kWidth})), at::zeros({kRows, kWidth})); });
    EXPECT_ERROR_HAS(engine.backward(loss), "pipeline.stages > 1: train with engine.train_batch(stage, data)");
  });
}

}  // namespace
}  // namespace ds
