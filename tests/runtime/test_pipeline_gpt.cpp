// The reference GPT as a PipelineModule through Engine::train_batch: a tied embedding/head
// on the first and last stage, accumulation and clipping by the global norm. Each layout's
// losses and weights must equal a plain LibTorch loop over ds::Gpt (which uses its embedding
// twice in one graph, so the tied gradient is summed by autograd itself) and a 1-process run.
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <torch/torch.h>

#include <map>

#include "ds/comm/topology.h"
#include "ds/common/error.h"
#include "ds/ckpt/checkpoint.h"
#include "ds/models/gpt.h"
#include "ds/nn/checkpointing.h"
#include "ds/pipe/module.h"
#include "ds/runtime/engine.h"
#include "ds/zero/init.h"
#include "support/errors.h"
#include "support/files.h"
#include "support/ranks.h"

namespace ds {
namespace {

constexpr int kSteps = 10, kAccum = 2, kRows = 2, kSeed = 21;
constexpr double kLr = 0.3, kClip = 0.3;

GptConfig tiny() {
  GptConfig c;
  c.vocab_size = 24, c.n_layer = 4, c.n_head = 2, c.d_model = 16, c.seq_len = 8;
  return c;
}

// Micro-batch i of step t of the global batch (data rank d's i-th is d * accum + i).
pipe::MicroBatch sample(int t, int i) {
  at::Tensor pos = at::arange(kRows * 8, at::kLong).reshape({kRows, 8});
  at::Tensor tokens = (pos * (t + 3) + i * 7 + pos.pow(2)) % tiny().vocab_size;
  return {tokens, tokens.roll(-1, 1)};
}

at::Tensor probe_tokens() { return sample(99, 0).inputs; }

struct GptRun {
  std::vector<double> losses;
  std::map<std::string, at::Tensor> weights;  // by ds::Gpt's names; only what this rank holds (none when split)
  at::Tensor probe;                           // the trained model's logits of probe_tokens()
  int clipped = 0;
};

GptRun plain_loop(int micro_batches) {
  torch::manual_seed(kSeed);
  Gpt gpt(tiny());
  torch::optim::SGD sgd(gpt->parameters(), torch::optim::SGDOptions(kLr));
  GptRun r;
  for (int t = 0; t < kSteps; ++t) {
    sgd.zero_grad();
    double loss = 0;
    for (int i = 0; i < micro_batches; ++i) {
      pipe::MicroBatch b = sample(t, i);
      at::Tensor l = gpt->loss(b.inputs, b.labels);
      loss += l.item<double>() / micro_batches;
      (l / double(micro_batches)).backward();
    }
    r.losses.push_back(loss);
    const double norm = torch::nn::utils::clip_grad_norm_(gpt->parameters(), kClip, 2.0, false);
    r.clipped += norm > kClip;
    sgd.step();
  }
  for (const auto& p : gpt->named_parameters()) r.weights[p.key()] = p.value().detach().clone();
  torch::NoGradGuard no_grad;
  r.probe = gpt->forward(probe_tokens());
  return r;
}

std::string config(int pipe, int data, int zero, int accum, int interval, int tensor = 1, const std::string& pipeline_extra = "") {
  return ds::str(R"({"train_batch_size": )", kRows * accum * data, R"(, "train_micro_batch_size_per_gpu": )", kRows,
                 R"(, "optimizer": {"type": "SGD", "params": {"lr": )", kLr, R"(}}, "gradient_clipping": )", kClip,
                 R"(, "zero_optimization": {"stage": )", zero, R"(}, "pipeline": {"stages": )", pipe,
                 R"(, "partition": "type:GptBlock", "activation_checkpoint_interval": )", interval, pipeline_extra,
                 R"(}, "tensor_parallel": {"autotp_size": )", tensor, "}}");
}

// One layout's model and engine, trained step by step.
struct Session {
  comm::ParallelGroups groups;
  Config cfg;
  pipe::PipelineModule model{nullptr};
  std::unique_ptr<Engine> engine;
  int accum = kAccum;

  tp::Group tensor;  // null without tensor parallelism

  Session(comm::Communicator& world, int pipe, int zero, int accum_ = kAccum, int interval = 0, int tensor_size = 1,
          const std::string& pipeline_extra = "")
      : groups(comm::ParallelGroups::create(world.shared_from_this(),
                                            comm::Topology::for_world(world.size(), pipe, tensor_size))),
        cfg(Config::parse(config(pipe, groups.data->size(), zero, accum_, interval, tensor_size, pipeline_extra),
                          "test config")),
        accum(accum_) {
    cfg.resolve(world.size());
    if (tensor_size > 1) tensor = groups.tensor;
    torch::manual_seed(kSeed);
    model = pipe::PipelineModule(gpt_layer_specs(tiny(), tensor), pipe::PipelineLayout::from(cfg, groups));
    engine = std::make_unique<Engine>(model.ptr(), cfg, groups);
  }
  pipe::StageModel stage() {
    return model->stage_model([t = tensor](const at::Tensor& out, const at::Tensor& y) { return gpt_loss(out, y, t); });
  }
  at::Tensor logits(const at::Tensor& tokens) { return tp::gather_from(engine->forward_pipeline(stage(), tokens), tensor); }
  // Steps from the engine's global step up to `to`: their losses.
  std::vector<double> train_to(int to) {
    std::vector<double> losses;
    const int dp = groups.coord.data;
    for (int t = int(engine->global_step()); t < to; ++t)
      losses.push_back(engine->train_batch(stage(), [&](int i) { return sample(t, dp * accum + i); }).loss);
    return losses;
  }
  std::map<std::string, at::Tensor> weights() {  // by ds::Gpt's names
    std::map<std::string, at::Tensor> out;
    for (const auto& p : model->named_parameters()) out[gpt_parameter_name(p.key(), tiny().n_layer)] = p.value().detach().clone();
    return out;
  }
};

GptRun engine_run(comm::Communicator& world, int pipe, int zero, int accum = kAccum, int interval = 0, int tensor = 1,
                  const std::string& save = "") {
  Session s(world, pipe, zero, accum, interval, tensor);
  GptRun r;
  r.losses = s.train_to(kSteps);
  if (!save.empty()) s.engine->save_checkpoint(save);
  if (tensor == 1) r.weights = s.weights();  // split weights are compared through the logits
  r.probe = s.logits(probe_tokens());
  return r;
}

void expect_same(const GptRun& got, const GptRun& want, const std::string& what) {
  ASSERT_EQ(got.losses.size(), want.losses.size()) << what;
  for (size_t t = 0; t < want.losses.size(); ++t) EXPECT_NEAR(got.losses[t], want.losses[t], 1e-5) << what << " step " << t;
  ASSERT_TRUE(got.probe.defined() && want.probe.defined()) << what;
  EXPECT_LT((got.probe - want.probe).abs().max().item<double>(), 1e-5) << what << ": the trained model's logits";
  for (const auto& [name, w] : got.weights) {
    ASSERT_TRUE(want.weights.count(name)) << what << " " << name;
    EXPECT_LT((w - want.weights.at(name)).abs().max().item<double>(), 1e-5) << what << " " << name;
  }
}

// (pipe, tensor, data) layouts: the issue's six, with ZeRO-1 over the data group in some, and
// activation checkpointing in one; 10 steps. Each layout's checkpoint consolidates (to-fp32)
// to the plain loop's weights under ds::Gpt's names.
TEST(PipelineGpt, ThreeDLayoutsMatchAPlainLoopAndOneProcess) {
  struct Layout { int world, pipe, tensor, zero, interval; };
  for (Layout l : {Layout{4, 1, 1, 1, 0}, Layout{4, 2, 1, 1, 0}, Layout{4, 1, 2, 1, 0}, Layout{4, 2, 2, 0, 0},
                   Layout{4, 4, 1, 0, 0}, Layout{8, 2, 2, 1, 0}, Layout{2, 2, 1, 0, 1}}) {
    test::TempDir dir;
    test::run_ranks(l.world, [&](comm::Communicator& world) {
      const int data = l.world / l.pipe / l.tensor;
      const GptRun plain = plain_loop(kAccum * data);
      ASSERT_GT(plain.clipped, 0) << "clipping never triggered: the norm over the stages would go unchecked";
      comm::GlooOptions solo;
      const GptRun single = engine_run(*comm::make_gloo(solo), 1, 0, kAccum * data);
      expect_same(single, plain, "1 process");
      const int64_t recomputed = checkpointing::recomputations();
      const std::string what = ds::str("pipe ", l.pipe, " x tensor ", l.tensor, " x data ", data, ", ZeRO ", l.zero,
                                       ", checkpoint interval ", l.interval, ", rank ", world.rank());
      const GptRun got = engine_run(world, l.pipe, l.zero, kAccum, l.interval, l.tensor, dir.path() + "/ckpt");
      expect_same(got, plain, what + " vs the plain loop");
      expect_same(got, single, what + " vs 1 process");
      if (world.rank() == 0) {  // to-fp32: every stage's and tensor rank's parameters, joined
        ckpt::CheckpointReader reader(dir.path() + "/ckpt");
        int compared = 0;
        for (const auto& [name, w] : reader.load_fp32_weights()) {
          const std::string gpt = gpt_parameter_name(name, tiny().n_layer);
          ASSERT_TRUE(plain.weights.count(gpt)) << what << " " << name;
          ASSERT_EQ(w.sizes(), plain.weights.at(gpt).sizes()) << what << " " << name;
          EXPECT_LT((w - plain.weights.at(gpt)).abs().max().item<double>(), 1e-5) << what << " to-fp32 " << name;
          ++compared;
        }
        EXPECT_EQ(size_t(compared), plain.weights.size()) << what;
      }
      if (l.interval > 0 && got.weights.count("blocks.0.fc.weight")) {  // this rank runs blocks: they were recomputed
        EXPECT_GT(checkpointing::recomputations(), recomputed) << what;
      }
    });
  }
}

// pipeline.pipe_partitioned / grad_partitioned (DeepSpeed's defaults, on): with pipe 2 x
// tensor 2 each tensor rank sends half of each activation and gradient and the next stage's
// group gathers them. The same bits arrive, so the losses equal those of whole messages
// exactly, with about half the bytes between the stages.
TEST(PipelineGpt, ActivationsSplitOverTheTensorGroupTrainTheSameWithHalfTheBytes) {
  test::run_ranks(4, [&](comm::Communicator& world) {
    std::vector<double> losses[2];
    int64_t bytes[2];
    for (int split = 0; split < 2; ++split) {
      Session s(world, 2, 0, kAccum, 0, 2,
                split ? "" : R"(, "pipe_partitioned": false, "grad_partitioned": false)");
      s.groups.pipe->logger().set_enabled(true);  // the engine follows the config's comms_logger (off)
      const int64_t before = s.groups.pipe->logger().total("send").message_bytes;
      losses[split] = s.train_to(kSteps);
      bytes[split] = s.groups.pipe->logger().total("send").message_bytes - before;
    }
    for (size_t t = 0; t < losses[0].size(); ++t) EXPECT_EQ(losses[1][t], losses[0][t]) << "step " << t;
    if (world.rank() == 0) std::printf("bytes sent between stages: %lld split, %lld whole\n", (long long)bytes[1], (long long)bytes[0]);
    // Every message is a header of 80 bytes and its data: the data halves.
    EXPECT_LT(bytes[1], bytes[0] * 0.6) << bytes[1] << " vs " << bytes[0] << " bytes sent between stages";
    EXPECT_GT(bytes[1], bytes[0] * 0.4) << bytes[1] << " vs " << bytes[0];
  });
}

// Tensor parallelism alone with every ZeRO stage over the data group (stage 3 built under
// ds::zero::Init, so each rank only ever holds its shard of its slice): ds::Gpt split over 2
// ranks x 2 data-parallel ranks against the plain loop.
TEST(TensorParallelGpt, ZeroStagesOneToThreeMatchThePlainLoop) {
  test::run_ranks(4, [](comm::Communicator& world) {
    const GptRun plain = plain_loop(kAccum * 2);
    for (int stage : {1, 2, 3}) {
      comm::ParallelGroups groups =
          comm::ParallelGroups::create(world.shared_from_this(), comm::Topology::for_world(4, 1, 2));
      Config cfg = Config::parse(config(1, 2, stage, kAccum, 0, 2), "test config");
      cfg.resolve(4);
      torch::manual_seed(kSeed);
      zero::Init init(groups.data, cfg);
      Gpt gpt(tiny(), groups.tensor);
      EngineOptions options;
      options.sharded_units = init.take_units();
      Engine engine(gpt.ptr(), cfg, groups, std::move(options));
      const int dp = groups.coord.data;
      std::vector<double> losses;
      for (int t = 0; t < kSteps; ++t) {
        for (int i = 0; i < kAccum; ++i) {
          pipe::MicroBatch b = sample(t, dp * kAccum + i);
          engine.backward(engine.forward([&] { return gpt->loss(b.inputs, b.labels); }));
        }
        losses.push_back(engine.step()->loss);
      }
      const std::string what = ds::str("tensor 2 x data 2, ZeRO ", stage, ", rank ", world.rank());
      for (size_t t = 0; t < losses.size(); ++t) EXPECT_NEAR(losses[t], plain.losses[t], 1e-5) << what << " step " << t;
      torch::NoGradGuard no_grad;
      at::Tensor probe = engine.forward([&] { return gpt->forward(probe_tokens()); });
      EXPECT_LT((probe - plain.probe).abs().max().item<double>(), 1e-5) << what << ": the trained model's logits";
    }
  });
}

// A PipelineModule built under ds::zero::Init (ZeRO-3 over 2 data ranks, one stage): each
// layer is sharded as soon as its factory returns, and training matches the plain loop.
TEST(PipelineGpt, AModuleBuiltUnderZeroInitTrainsAtStageThree) {
  test::run_ranks(2, [](comm::Communicator& world) {
    const GptRun plain = plain_loop(kAccum * 2);
    comm::ParallelGroups groups = comm::ParallelGroups::create(world.shared_from_this(), comm::Topology::for_world(2, 1, 1));
    Config cfg = Config::parse(config(1, 2, 3, kAccum, 0), "test config");
    cfg.resolve(2);
    torch::manual_seed(kSeed);
    zero::Init init(groups.data, cfg);
    pipe::PipelineModule model(gpt_layer_specs(tiny()), pipe::PipelineLayout::from(cfg, groups));
    for (const auto& p : model->named_parameters())  // released shards: nothing of the whole model stays
      EXPECT_EQ(p.value().numel(), 0) << p.key();
    EngineOptions options;
    options.sharded_units = init.take_units();
    Engine engine(model.ptr(), cfg, groups, std::move(options));
    for (int t = 0; t < kSteps; ++t) {
      const double loss = engine.train_batch(model->stage_model([](const at::Tensor& o, const at::Tensor& y) { return gpt_loss(o, y); }),
                                             [&](int i) { return sample(t, groups.coord.data * kAccum + i); })
                              .loss;
      EXPECT_NEAR(loss, plain.losses[size_t(t)], 1e-5) << "step " << t << ", rank " << world.rank();
    }
  });
}

// Saved at (pipe 2 x data 2, ZeRO-1) after 3 steps: resumed in the same layout the next
// steps are bit-identical; resumed at 4 stages, at 1 stage x 2 data ranks or in one process
// (the names are global layer indices) they match to 1e-5; the consolidated fp32 weights
// are those of a 1-process run, under its names.
TEST(PipelineGpt, CheckpointsResumeExactlyAndLoadAtOtherPipelineSizes) {
  test::TempDir dir;
  const std::string ckpt = dir.path() + "/ckpt";
  std::vector<double> after;  // steps 4..kSteps of the uninterrupted run
  test::run_ranks(4, [&](comm::Communicator& world) {
    Session s(world, 2, 1);
    s.train_to(3);
    EXPECT_EQ(s.engine->save_checkpoint(ckpt), ckpt + "/global_step3");
    const std::vector<double> rest = s.train_to(kSteps);
    Session resumed(world, 2, 1);
    EXPECT_EQ(resumed.engine->load_checkpoint(ckpt).global_step, 3);
    const std::vector<double> again = resumed.train_to(kSteps);
    ASSERT_EQ(again.size(), rest.size());
    for (size_t i = 0; i < rest.size(); ++i) EXPECT_EQ(again[i], rest[i]) << "step " << 4 + i << ", rank " << world.rank();
    for (const auto& [name, w] : resumed.weights()) EXPECT_TRUE(w.equal(s.weights().at(name))) << name;
  });
  comm::GlooOptions solo;
  Session single(*comm::make_gloo(solo), 1, 0, 2 * kAccum);
  const std::vector<double> first = single.train_to(3);
  const std::vector<double> want = single.train_to(kSteps);
  struct Layout { int world, pipe, zero, accum; };
  for (Layout l : {Layout{4, 4, 0, 2 * kAccum}, Layout{2, 1, 1, kAccum}, Layout{2, 2, 0, 2 * kAccum}}) {
    test::run_ranks(l.world, [&](comm::Communicator& world) {
      Session s(world, l.pipe, l.zero, l.accum);
      s.engine->load_checkpoint(ckpt);
      const std::vector<double> got = s.train_to(kSteps);
      for (size_t i = 0; i < want.size(); ++i)
        EXPECT_NEAR(got[i], want[i], 1e-5) << "pipe " << l.pipe << ", step " << 4 + i << ", rank " << world.rank();
    });
  }
  Session loaded(*comm::make_gloo(solo), 1, 0, 2 * kAccum);
  loaded.engine->load_checkpoint(ckpt);
  EXPECT_NEAR(loaded.train_to(kSteps).front(), want.front(), 1e-5);
  // The consolidated weights: every stage's units, the tied embedding once, the names of a
  // 1-process run of the same module.
  ckpt::CheckpointReader reader(ckpt, "global_step3");
  EXPECT_EQ(reader.manifest().pp_world_size, 2);
  EXPECT_EQ(reader.manifest().mp_ranks(), (std::vector<int>{0, 1}));
  // DeepSpeed's per-layer weight files: layers 0-6; the head (layer 7) reuses layer 0's embedding.
  for (int layer = 0; layer < 7; ++layer) EXPECT_NE(reader.manifest().find_file(ckpt::layer_states_name(layer)), nullptr) << layer;
  EXPECT_EQ(reader.manifest().find_file(ckpt::layer_states_name(7)), nullptr);
  Session at3(*comm::make_gloo(solo), 1, 0, 2 * kAccum);
  at3.train_to(3);
  std::map<std::string, at::Tensor> fp32;
  for (const auto& [name, t] : reader.load_fp32_weights()) fp32[name] = t;
  const auto want_weights = at3.model->named_parameters();
  EXPECT_EQ(fp32.size(), want_weights.size());
  for (const auto& p : want_weights) {
    ASSERT_TRUE(fp32.count(p.key())) << p.key();
    EXPECT_LT((fp32[p.key()] - p.value()).abs().max().item<double>(), 1e-5) << p.key();
  }
  (void)first;
}

// Tensor parallelism: saved at (pipe 2 x tensor 2), each rank its slices; resumed in the same
// layout bit-exactly, at (pipe 1 x tensor 2 x data 2, ZeRO-1) and at other tensor sizes
// (pipe 2 x tensor 1, pipe 1 x tensor 1 x data 2 at ZeRO-2: slices joined) to 1e-5 of the
// 1-process run; to-fp32 joins the slices into the 1-process model's weights.
TEST(PipelineGpt, TensorParallelCheckpointsResumeAndConsolidate) {
  test::TempDir dir;
  const std::string ckpt = dir.path() + "/ckpt";
  test::run_ranks(4, [&](comm::Communicator& world) {
    Session s(world, 2, 0, 2 * kAccum, 0, 2);
    s.train_to(3);
    s.engine->save_checkpoint(ckpt);
    const std::vector<double> rest = s.train_to(kSteps);
    Session resumed(world, 2, 0, 2 * kAccum, 0, 2);
    resumed.engine->load_checkpoint(ckpt);
    const std::vector<double> again = resumed.train_to(kSteps);
    for (size_t i = 0; i < rest.size(); ++i) EXPECT_EQ(again[i], rest[i]) << "step " << 4 + i << ", rank " << world.rank();
  });
  comm::GlooOptions solo;
  Session single(*comm::make_gloo(solo), 1, 0, 2 * kAccum);
  single.train_to(3);
  std::map<std::string, at::Tensor> at3;
  for (const auto& p : single.model->named_parameters()) at3[p.key()] = p.value().detach().clone();
  const std::vector<double> want = single.train_to(kSteps);
  test::run_ranks(4, [&](comm::Communicator& world) {
    Session s(world, 1, 1, kAccum, 0, 2);
    s.engine->load_checkpoint(ckpt);
    const std::vector<double> got = s.train_to(kSteps);
    for (size_t i = 0; i < want.size(); ++i) EXPECT_NEAR(got[i], want[i], 1e-5) << "step " << 4 + i << ", rank " << world.rank();
  });
  test::run_ranks(2, [&](comm::Communicator& world) {
    Session s(world, 2, 0, 2 * kAccum);
    s.engine->load_checkpoint(ckpt);
    const std::vector<double> got = s.train_to(kSteps);
    for (size_t i = 0; i < want.size(); ++i) EXPECT_NEAR(got[i], want[i], 1e-5) << "pipe 2 x tensor 1, step " << 4 + i;
  });
  test::run_ranks(2, [&](comm::Communicator& world) {
    Session s(world, 1, 2, kAccum);
    s.engine->load_checkpoint(ckpt);
    const std::vector<double> got = s.train_to(kSteps);
    for (size_t i = 0; i < want.size(); ++i) EXPECT_NEAR(got[i], want[i], 1e-5) << "data 2, ZeRO-2, step " << 4 + i;
  });
  ckpt::CheckpointReader reader(ckpt);
  std::map<std::string, at::Tensor> fp32;
  for (const auto& [name, t] : reader.load_fp32_weights()) fp32[name] = t;
  EXPECT_EQ(fp32.size(), at3.size());
  for (const auto& [name, w] : at3) {
    ASSERT_TRUE(fp32.count(name)) << name;
    ASSERT_EQ(fp32[name].sizes(), w.sizes()) << name;
    EXPECT_LT((fp32[name] - w).abs().max().item<double>(), 1e-5) << name;
  }
}

// A checkpoint saved without tensor parallelism (1 process) loads into tensor slices: at
// (pipe 1 x tensor 2 x data 2, ZeRO-3) and (pipe 2 x tensor 2) each rank cuts its slices of
// the whole weights and optimizer state, and training continues as the 1-process run does. The
// loaded slices equal plain LibTorch slicing of to-fp32's whole weights, bit for bit.
TEST(PipelineGpt, AnUnsplitCheckpointLoadsIntoTensorSlices) {
  test::TempDir dir;
  const std::string ckpt = dir.path() + "/ckpt";
  comm::GlooOptions solo;
  std::vector<double> want;
  {
    Session single(*comm::make_gloo(solo), 1, 0, 2 * kAccum);
    single.train_to(3);
    single.engine->save_checkpoint(ckpt);
    want = single.train_to(kSteps);
  }
  std::map<std::string, at::Tensor> whole;
  for (const auto& [name, t] : ckpt::CheckpointReader(ckpt).load_fp32_weights()) whole[name] = t;
  struct Layout {
    int pipe, zero, accum;
  };
  for (const Layout l : {Layout{1, 3, kAccum}, Layout{2, 0, 2 * kAccum}}) {
    test::run_ranks(4, [&](comm::Communicator& world) {
      Session s(world, l.pipe, l.zero, l.accum, 0, 2);
      s.engine->load_checkpoint(ckpt);
      if (l.zero == 0) {  // the slices this rank now holds, against plain slicing of the whole
        for (const tp::Split& split : tp::find_sharded_parameters(*s.model)) {
          const at::Tensor& w = whole.at(split.name);
          const int64_t block = w.size(split.dim) / split.groups, mine = block / 2;
          std::vector<at::Tensor> pieces;
          for (int g = 0; g < split.groups; ++g)
            pieces.push_back(w.narrow(split.dim, g * block + s.groups.coord.tensor * mine, mine));
          at::Tensor held;
          for (const auto& p : s.model->named_parameters())
            if (p.key() == split.name) held = p.value();
          ASSERT_TRUE(held.defined()) << split.name;
          EXPECT_TRUE(at::equal(held, at::cat(pieces, split.dim))) << split.name << ", rank " << world.rank();
        }
      }
      const std::vector<double> got = s.train_to(kSteps);
      for (size_t i = 0; i < want.size(); ++i)
        EXPECT_NEAR(got[i], want[i], 1e-5) << "pipe " << l.pipe << " ZeRO " << l.zero << ", step " << 4 + i;
    });
  }
}

TEST(PipelineGpt, ACheckpointOfAnotherModelIsRefusedOnEveryStage) {
  test::TempDir dir;
  const std::string ckpt = dir.path() + "/ckpt";
  comm::GlooOptions solo;
  {
    Session s(*comm::make_gloo(solo), 1, 0, kAccum);
    s.train_to(1);
    s.engine->save_checkpoint(ckpt);
  }
  // A ds::Gpt (other names) cannot load a PipelineModule's checkpoint: one line, every rank.
  test::run_ranks(2, [&](comm::Communicator& world) {
    Config cfg = Config::parse(config(1, 2, 0, kAccum, 0), "test config");
    cfg.resolve(2);
    Gpt gpt(tiny());
    Engine engine(gpt.ptr(), cfg, world.shared_from_this());
    EXPECT_ERROR_HAS(engine.load_checkpoint(ckpt), "parameter wte.weight [24, 16] of the model is not in the checkpoint");
  });
}

comm::ParallelGroups two_stages(comm::Communicator& world) {
  return comm::ParallelGroups::create(world.shared_from_this(), comm::Topology::for_world(2, 2, 1));
}

Config two_stage_config(int interval) {
  Config cfg = Config::parse(config(2, 1, 0, kAccum, interval), "test config");
  cfg.resolve(2);
  return cfg;
}

TEST(PipelineGpt, TheTiedCopiesStartEqualWhateverEachStageBuilt) {
  test::run_ranks(2, [](comm::Communicator& world) {
    comm::ParallelGroups groups = two_stages(world);
    Config cfg = two_stage_config(0);
    torch::manual_seed(kSeed + world.rank());  // each stage draws another base seed
    pipe::PipelineModule model(gpt_layer_specs(tiny()), pipe::PipelineLayout::from(cfg, groups));
    Engine engine(model.ptr(), cfg, groups);
    at::Tensor wte = model->tied().at(0).module->parameters()[0].detach().clone();
    at::Tensor first = wte.clone();
    groups.pipe->broadcast(first, 0).wait();
    EXPECT_TRUE(wte.equal(first)) << "rank " << world.rank();
  });
}

// The 1-bit optimizers in a pipeline (2 stages x 2 data ranks): each stage compresses its own
// units, and the tied embedding's two copies — one unit on each end stage, the same summed
// gradient — stay bit-equal through the compressed phase (1-bit Lamb's scales are a mean over
// every stage's tensors, so the copies get one scale).
TEST(PipelineGpt, OneBitOptimizersKeepTheTiedCopiesEqual) {
  test::run_ranks(4, [](comm::Communicator& world) {
    for (const char* type : {"OneBitAdam", "OneBitLamb"}) {
      auto groups = comm::ParallelGroups::create(world.shared_from_this(), comm::Topology::for_world(4, 2, 1));
      const std::string extra = std::string(type) == "OneBitLamb" ? R"(, "bias_correction": false)" : "";
      Config cfg = Config::parse(
          ds::str(R"({"train_batch_size": )", kRows * kAccum * 2, R"(, "train_micro_batch_size_per_gpu": )", kRows,
                  R"(, "optimizer": {"type": ")", type, R"(", "params": {"lr": 0.01, "eps": 1e-3, "freeze_step": 2)",
                  extra, R"(}}, "pipeline": {"stages": 2, "partition": "type:GptBlock"}})"),
          "test config");
      cfg.resolve(4);
      torch::manual_seed(kSeed);
      pipe::PipelineModule model(gpt_layer_specs(tiny()), pipe::PipelineLayout::from(cfg, groups));
      Engine engine(model.ptr(), cfg, groups);
      auto stage = model->stage_model([](const at::Tensor& out, const at::Tensor& y) { return gpt_loss(out, y, nullptr); });
      std::vector<double> losses;
      for (int t = 0; t < 8; ++t)
        losses.push_back(engine.train_batch(stage, [&](int i) { return sample(t, groups.coord.data * kAccum + i); }).loss);
      for (double l : losses) EXPECT_TRUE(std::isfinite(l)) << type;
      at::Tensor wte = model->tied().at(0).module->parameters()[0].detach().clone();
      at::Tensor first = wte.clone();
      groups.pipe->broadcast(first, 0).wait();
      EXPECT_TRUE(wte.equal(first)) << type << ", rank " << world.rank();
    }
  });
}

TEST(PipelineGpt, AModuleForAnotherStageOrAnIntervalWithoutAModuleIsRefused) {
  test::run_ranks(2, [](comm::Communicator& world) {
    comm::ParallelGroups groups = two_stages(world);
    Config cfg = two_stage_config(0);
    pipe::PipelineLayout wrong = pipe::PipelineLayout::from(cfg, groups);
    wrong.stage = 1 - wrong.stage;
    pipe::PipelineModule swapped(gpt_layer_specs(tiny()), wrong);
    EXPECT_ERROR_HAS(Engine(swapped.ptr(), cfg, groups), ds::str("built as stage ", wrong.stage, " of 2 but this rank is stage ",
                                                                1 - wrong.stage, " of 2"));
    Config ckpt = two_stage_config(1);
    auto plain = std::make_shared<torch::nn::LinearImpl>(4, 4);
    EXPECT_ERROR_HAS(Engine(plain, ckpt, groups), "activation_checkpoint_interval > 0 needs a ds::pipe::PipelineModule");
  });
}

// The sparse_attention section: accepted when the pipeline's GPT blocks use it (every stage
// agrees, whichever layers it holds), refused for a pipeline whose blocks do not or a model
// that cannot.
TEST(PipelineGpt, SparseAttentionIsHonouredOnlyByAPipelineWhoseBlocksUseIt) {
  test::run_ranks(2, [](comm::Communicator& world) {
    comm::ParallelGroups groups = two_stages(world);
    Config cfg = two_stage_config(0);
    cfg.sparse_attention.enabled = true, cfg.sparse_attention.mode = SparseMode::kFixed, cfg.sparse_attention.block = 4;
    cfg.sparse_attention.num_local_blocks = 1;
    const pipe::PipelineLayout layout = pipe::PipelineLayout::from(cfg, groups);
    GptConfig sparse = tiny();
    sparse.sparse = cfg.sparse_attention;
    pipe::PipelineModule uses(gpt_layer_specs(sparse), layout);
    EXPECT_TRUE(uses->uses_sparse_attention());
    EXPECT_NO_THROW(Engine(uses.ptr(), cfg, groups));
    pipe::PipelineModule dense(gpt_layer_specs(tiny()), layout);
    EXPECT_ERROR_HAS(Engine(dense.ptr(), cfg, groups), "sparse_attention: this model does not use block-sparse attention");
    auto plain = std::make_shared<torch::nn::LinearImpl>(4, 4);
    EXPECT_ERROR_HAS(Engine(plain, cfg, groups), "ds::sparse::SparseSelfAttention and ds::nn::SparseAttentionUser");
  });
}

TEST(TensorParallelGpt, SettingsTheEngineCannotHonourAreRefusedOnEveryRank) {
  test::run_ranks(2, [](comm::Communicator& world) {
    comm::ParallelGroups split = comm::ParallelGroups::create(world.shared_from_this(), comm::Topology::for_world(2, 1, 2));
    Config cfg = Config::parse(config(1, 1, 0, kAccum, 0, 2), "test config");
    cfg.resolve(2);
    // A model with no tensor-parallel layers would train whole on every rank of the group.
    auto plain = std::make_shared<torch::nn::LinearImpl>(4, 4);
    EXPECT_ERROR_HAS(Engine(plain, cfg, split), "the model has no tensor-parallel layers");
    // The config's size must be the groups'.
    Gpt gpt(tiny(), split.tensor);
    EXPECT_ERROR_HAS(Engine(gpt.ptr(), cfg, world.shared_from_this()),
                     "tensor_parallel.autotp_size is 2 but the tensor group has 1 ranks");
    Config overlap = Config::parse(
        R"({"train_batch_size": 4, "tensor_parallel": {"autotp_size": 2, "tp_overlap_comm": true}})", "test config");
    overlap.resolve(2);
    EXPECT_ERROR_HAS(Engine(gpt.ptr(), overlap, split), "tensor_parallel.tp_overlap_comm");
  });
}

// A checkpoint with a layer no stage of the loading model has: named on every stage.
TEST(PipelineGpt, ACheckpointLayerNoStageHoldsIsNamed) {
  test::TempDir dir;
  auto linears = [](int n) {
    std::vector<pipe::LayerSpec> specs;
    for (int i = 0; i < n; ++i)
      specs.push_back({"Linear", [] { return std::make_shared<torch::nn::LinearImpl>(4, 4); },
                       [](torch::nn::Module& m, const at::Tensor& x) { return dynamic_cast<torch::nn::LinearImpl&>(m).forward(x); },
                       20, ""});
    return specs;
  };
  auto cfg_for = [](int pipe) {
    Config c = Config::parse(ds::str(R"({"train_batch_size": 2, "optimizer": {"type": "SGD", "params": {"lr": 0.1}},
                                         "pipeline": {"stages": )", pipe, "}}"), "test config");
    c.resolve(pipe);
    return c;
  };
  {
    comm::GlooOptions solo;
    auto one = comm::make_gloo(solo);
    Config c = cfg_for(1);
    pipe::PipelineModule four(linears(4), pipe::PipelineLayout{});
    Engine(four.ptr(), c, one).save_checkpoint(dir.path());
  }
  test::run_ranks(2, [&](comm::Communicator& world) {
    Config c = cfg_for(2);
    comm::ParallelGroups groups = comm::ParallelGroups::create(world.shared_from_this(), comm::Topology::for_world(2, 2, 1));
    pipe::PipelineModule three(linears(3), pipe::PipelineLayout::from(c, groups));
    Engine engine(three.ptr(), c, groups);
    EXPECT_ERROR_HAS(engine.load_checkpoint(dir.path()), "its parameter 3.weight is in no pipeline stage of this model");
  });
}

// forward_pipeline's output is sent to every stage; one that cannot travel is an error on
// every stage, not a hang.
TEST(PipelineGpt, ForwardPipelineRefusesAnOutputItCannotSendOnEveryStage) {
  test::run_ranks(2, [](comm::Communicator& world) {
    comm::ParallelGroups groups = two_stages(world);
    Config cfg = two_stage_config(0);
    auto layer = std::make_shared<torch::nn::LinearImpl>(2, 2);
    Engine engine(layer, cfg, groups);
    pipe::StageModel nine_dims{[&](int, const at::Tensor& x) {
                                 return groups.coord.pipe == 1 ? x.reshape({1, 1, 1, 1, 1, 1, 1, 1, 2}) : x;
                               },
                               nullptr};
    EXPECT_ERROR_HAS(engine.forward_pipeline(nine_dims, at::ones({2})), "has more than 8 dimensions");
    pipe::StageModel fine{[&](int, const at::Tensor& x) { return x * 2; }, nullptr};
    EXPECT_TRUE(engine.forward_pipeline(fine, at::ones({2})).equal(at::full({2}, 4.0f)));
  });
}

}  // namespace
}  // namespace ds
