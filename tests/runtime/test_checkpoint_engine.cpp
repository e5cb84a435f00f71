// Engine::save_checkpoint / load_checkpoint:
// * a resumed engine continues bit for bit (fp16 with its loss scaler and skipped steps,
//   bf16, accumulation) at ZeRO stages 0, 1, 2 and 3;
// * a checkpoint saved by 4 ranks at stage 3 continues at 2 ranks stage 1, 1 rank stage 0,
//   and (saved again there) 3 ranks stage 3, on the 4-rank run's loss trajectory;
// * stage3_gather_16bit_weights_on_model_save puts the gathered weights, in the training
//   precision, into the model-states file;
// * SIGKILL during a save leaves `latest` on the previous, loadable checkpoint;
// * buffers, frozen parameters and root parameters round-trip by their state-dict names;
// * bad input (another model, another optimizer, a missing directory, a corrupt shard only
//   one rank reads, a save inside an accumulation window, differing tags) gives one clear
//   error on every rank, and a failed load leaves the engine as it was.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/linear.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <thread>

#include "ds/ckpt/atomic_file.h"
#include "ds/ckpt/checkpoint.h"
#include "ds/config/config.h"
#include "support/errors.h"
#include "support/ranks.h"
#include "support/files.h"
#include "train_util.h"

using namespace ds;

namespace {

using test::flip_byte;

struct TempDir : test::TempDir {
  TempDir() : test::TempDir("ds_ckpt_engine") {}
};

const char* kAdamW = R"({"type": "AdamW", "params": {"lr": 0.01, "weight_decay": 0.01}})";
const char* kSgd = R"({"type": "SGD", "params": {"lr": 0.05, "momentum": 0.9}})";

// Global batch 12 as `world` ranks x `gas` micro-batches; WarmupDecayLR over 20 steps, so a
// resumed run must restore the schedule's position. AdamW clips, SGD does not (see
// test_engine.cpp: clipping and Adam would hide a gradient-scale bug).
std::string config(int stage, int world, const char* optimizer, const std::string& extra = "", int gas = 1) {
  return ds::str(
      R"({"train_batch_size": 12, "train_micro_batch_size_per_gpu": )", 12 / world / gas,
      R"(, "gradient_accumulation_steps": )", gas, R"(, "optimizer": )", optimizer,
      R"(, "gradient_clipping": )", optimizer == kAdamW ? "0.5" : "0.0",
      R"(, "scheduler": {"type": "WarmupDecayLR", "params": {"warmup_max_lr": 0.01, "warmup_num_steps": 5, "total_num_steps": 20}})",
      R"(, "zero_optimization": {"stage": )", stage,
      stage == 3 ? R"(, "stage3_param_persistence_threshold": 0, "stage3_max_reuse_distance": 0)" : "", "}", extra, "}");
}


void write_values(const std::string& path, const std::vector<double>& values) {
  std::FILE* f = std::fopen(path.c_str(), "w");
  ASSERT_NE(f, nullptr) << path;
  for (double v : values) std::fprintf(f, "%.17g\n", v);  // exact for a double
  std::fclose(f);
}

std::vector<double> read_values(const std::string& path) {
  std::ifstream in(path);
  std::vector<double> out;
  for (double v; in >> v;) out.push_back(v);
  return out;
}

// Every parameter's fp32 master weights in a checkpoint, flattened in unit and slot order:
// the layout of TrainResult::weights.
at::Tensor checkpoint_weights(const std::string& dir) {
  std::vector<at::Tensor> flat;
  for (const auto& [name, t] : ckpt::CheckpointReader(dir).load_fp32_weights()) flat.push_back(t.reshape(-1));
  return at::cat(flat);
}


}  // namespace

// ---- bit-exact resume ---------------------------------------------------------------------

class ResumeAtStage : public ::testing::TestWithParam<int> {};

TEST_P(ResumeAtStage, ANewEngineContinuesBitForBit) {
  const int stage = GetParam();
  TempDir dir;
  // fp16 starts at scale 2^16, so the first steps overflow and are skipped, and a window of 4
  // doubles the scale during the run: the scaler's whole state must come back. bf16 with
  // accumulation checks the rounding of the reloaded weights and the micro-step count.
  const std::vector<std::pair<std::string, std::string>> runs = {
      {"fp16", config(stage, 2, kAdamW,
                      R"(, "fp16": {"enabled": true, "initial_scale_power": 20, "loss_scale_window": 4})")},
      {"bf16 + accumulation", config(stage, 2, kAdamW, R"(, "bf16": {"enabled": true})", 2)},
      {"fp32 SGD", config(stage, 2, kSgd)}};
  test::run_ranks(2, [&](comm::Communicator& c) {
    for (size_t i = 0; i < runs.size(); ++i) {
      const auto& [name, cfg] = runs[i];
      const std::string ck = dir / ds::str("ck", i);
      test::TinyRun whole(c.shared_from_this(), cfg);
      whole.train_to(20);
      test::TinyRun first(c.shared_from_this(), cfg);
      first.train_to(10);
      first.engine().save_checkpoint(ck, "", {{"data_step", 10}});
      test::TinyRun second(c.shared_from_this(), cfg);  // a new model and engine, from scratch
      LoadedCheckpoint loaded = second.engine().load_checkpoint(ck);
      EXPECT_EQ(loaded.tag, "global_step10");
      EXPECT_EQ(loaded.client_state, nlohmann::json({{"data_step", 10}}));
      EXPECT_EQ(second.engine().current_lr(), first.engine().current_lr()) << name;
      second.train_to(20);
      auto a = whole.result(), b = second.result();
      ASSERT_EQ(b.losses.size(), 10u) << name;
      for (size_t s = 0; s < 10; ++s) {
        EXPECT_EQ(b.losses[s], a.losses[10 + s]) << name << " step " << 11 + s;
        EXPECT_EQ(b.scales[s], a.scales[10 + s]) << name << " step " << 11 + s;
        EXPECT_EQ(b.skipped[s], a.skipped[10 + s]) << name << " step " << 11 + s;
      }
      EXPECT_TRUE(at::equal(b.weights, a.weights))
          << name << ": max diff " << (b.weights - a.weights).abs().max().item<double>();
      if (name == "fp16") {  // the run exercised what it claims to
        if (c.rank() == 0) {
          std::printf("fp16 loss scale per step:");
          for (size_t s = 0; s < 20; ++s) std::printf(" %g%s", a.scales[s], a.skipped[s] ? " (skipped)" : "");
          std::printf("\n");
        }
        EXPECT_TRUE(a.skipped[0]) << "no overflow at scale 2^16";
        EXPECT_NE(a.scales[19], a.scales[10]) << "the scale did not change after step 10";
      }
    }
  });
}

INSTANTIATE_TEST_SUITE_P(Stages, ResumeAtStage, ::testing::Values(0, 1, 2, 3),
                         [](const auto& info) { return "stage" + std::to_string(info.param); });

// ---- reshape ------------------------------------------------------------------------------

// The checkpoint itself is exact (fp32 masters and states, bit for bit, whatever the
// layout); what differs between 4, 2, 1 and 3 ranks is the order in which the gradient
// reduction sums, ~1e-7 relative per step, which test_zero.cpp bounds by 1e-5 over 20 steps
// against one process. The same bound holds here. With AdamW the attention key biases are
// left out of the weight comparison: their true gradient is 0, the rounding noise they get
// depends on the summation order, and Adam turns it into +-lr steps (test_engine.cpp).
TEST(EngineCheckpoint, FourRanksStageThreeContinuesAtTwoRanksStageOneOneRankStageZeroAndThreeRanksStageThree) {
  for (const char* opt : {kSgd, kAdamW}) {
    TempDir dir;
    test::run_ranks(4, [&](comm::Communicator& c) {  // the uninterrupted run, saving on the way
      test::TinyRun run(c.shared_from_this(), config(3, 4, opt));
      run.train_to(10);
      run.engine().save_checkpoint(dir / "at10");
      run.train_to(20);
      run.engine().save_checkpoint(dir / "at20");
      const auto r = run.result();  // collective at stage 3
      if (c.rank() == 0) write_values(dir / "losses", r.losses);
    });
    const bool adam = opt == kAdamW;
    auto check = [&](comm::Communicator& c, const test::TinyRun& run, size_t from, const std::string& what) {
      const std::vector<double> base = read_values(dir / "losses");
      ASSERT_EQ(base.size(), 20u);
      auto r = run.result();
      ASSERT_EQ(r.losses.size(), 20 - from) << what;
      EXPECT_LT(test::max_abs_diff(r.losses, {base.begin() + long(from), base.end()}), 1e-5) << what;
      at::Tensor diff = (r.weights - checkpoint_weights(dir / "at20")).abs();
      if (adam) diff.masked_fill_(r.key_bias, 0.0);
      EXPECT_LT(diff.max().item<double>(), 1e-5) << what;
      if (c.rank() == 0)
        std::printf(
            "%s, %s: max loss diff %.3g, max weight diff %.3g\n", what.c_str(), adam ? "AdamW" : "SGD",
            test::max_abs_diff(r.losses, {base.begin() + long(from), base.end()}), diff.max().item<double>());
    };
    test::run_ranks(2, [&](comm::Communicator& c) {
      test::TinyRun run(c.shared_from_this(), config(1, 2, opt));
      EXPECT_EQ(run.engine().load_checkpoint(dir / "at10").global_step, 10);
      run.train_to(20);
      check(c, run, 10, "4 ranks stage 3 -> 2 ranks stage 1");
    });
    test::run_ranks(1, [&](comm::Communicator& c) {
      test::TinyRun run(c.shared_from_this(), config(0, 1, opt));
      run.engine().load_checkpoint(dir / "at10");
      run.train_to(15);
      run.engine().save_checkpoint(dir / "at15");
      run.train_to(20);
      check(c, run, 10, "4 ranks stage 3 -> 1 rank stage 0");
    });
    test::run_ranks(3, [&](comm::Communicator& c) {  // 3 does not divide the units' 64 x 4 padding
      test::TinyRun run(c.shared_from_this(), config(3, 3, opt));
      run.engine().load_checkpoint(dir / "at15");
      run.train_to(20);
      check(c, run, 15, "(4 ranks stage 3 -> 1 rank stage 0) -> 3 ranks stage 3");
    });
  }
}

TEST(EngineCheckpoint, StageThreeGathersSixteenBitWeightsIntoTheModelStatesOnRequest) {
  for (bool gather : {false, true}) {
    TempDir dir;
    test::run_ranks(2, [&](comm::Communicator& c) {
      const std::string cfg = ds::str(
          R"({"train_batch_size": 12, "optimizer": )", kSgd, R"(, "bf16": {"enabled": true}, "zero_optimization": )",
          R"({"stage": 3, "stage3_param_persistence_threshold": 0, "stage3_gather_16bit_weights_on_model_save": )",
          gather ? "true" : "false", "}}");
      test::TinyRun run(c.shared_from_this(), cfg);
      run.train_to(3);
      run.engine().save_checkpoint(dir.path());
      if (c.rank() != 0) return;
      ckpt::ModelStates states = ckpt::CheckpointReader(dir.path()).load_model_states();
      const at::Tensor* w = nullptr;
      for (const auto& [name, t] : states.module)
        if (name == "blocks.1.fc.weight") w = &t;
      if (!gather) {
        EXPECT_EQ(w, nullptr) << "stage 3 without the flag keeps the weights in the shards only";
        return;
      }
      ASSERT_NE(w, nullptr);
      EXPECT_EQ(w->scalar_type(), at::kBFloat16);
      EXPECT_EQ(w->sizes(), (std::vector<int64_t>{128, 32}));
      // The fp32 masters rounded to bf16: what the model computed with.
      at::Tensor master;
      for (const auto& [name, t] : ckpt::CheckpointReader(dir.path()).load_fp32_weights())
        if (name == "blocks.1.fc.weight") master = t;
      EXPECT_TRUE(w->equal(master.to(at::kBFloat16)));
    });
  }
}

// ---- crashes ------------------------------------------------------------------------------

namespace {

// The saving child's fault injection: SIGKILL at the g_kill_at-th file commit.
int g_commits = 0, g_kill_at = 0;
void kill_at_commit(const std::string&) {
  if (++g_commits == g_kill_at) ::kill(::getpid(), SIGKILL);
}

}  // namespace

TEST(EngineCheckpoint, KillNineDuringASaveLeavesLatestOnThePreviousLoadableCheckpoint) {
  // A save on one rank writes four files, each to a temporary name then renamed: the
  // optimizer part, the model states, the manifest, `latest`. The child saves at step 1, then
  // at step 2 dies by SIGKILL with file k (1..4) of that save fully written but not renamed.
  const std::string cfg =
      R"({"train_batch_size": 2, "optimizer": {"type": "AdamW", "params": {"lr": 0.001}}})";
  const test::TinyShape big{2, 64};
  constexpr int kFilesPerSave = 4;
  for (int k = 1; k <= kFilesPerSave; ++k) {
    TempDir dir;
    pid_t child = ::fork();  // no LibTorch work in this process before the last fork
    ASSERT_GE(child, 0);
    if (child == 0) {
      try {
        at::set_num_threads(1);
        test::TinyRun run(test::solo(), cfg, big);
        g_kill_at = kFilesPerSave + k;
        ckpt::set_commit_hook_for_testing(&kill_at_commit);
        for (int64_t step = 1;; ++step) {
          run.train_to(step);
          run.engine().save_checkpoint(dir.path());
        }
      } catch (const std::exception& e) {
        std::fprintf(stderr, "saving child: %s\n", e.what());
      }
      ::_exit(1);
    }
    int status = 0;
    ASSERT_EQ(::waitpid(child, &status, 0), child);
    ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL)
        << "the saving child was not killed in its second save (status " << status << ")";
    // The killed save left its temporary file; `latest` still names step 1, complete.
    bool temp_left = false;
    for (const auto& entry : std::filesystem::recursive_directory_iterator(dir.path()))
      temp_left |= ckpt::is_temp_file_name(entry.path().filename().string());
    EXPECT_TRUE(temp_left) << "file " << k;
    EXPECT_EQ(ckpt::stale_temp_files(dir.path()).size(), 1u) << "file " << k;
    ckpt::CheckpointReader ck(dir.path());
    ck.verify_all();  // every file of the tag `latest` names is whole
    EXPECT_EQ(ck.tag(), "global_step1") << "file " << k;
    // Killed before its manifest, step 2 is no checkpoint at all; killed writing `latest`, it is
    // complete but not latest (`latest` moves last).
    const std::vector<std::string> complete = ckpt::list_tags(dir.path());
    const std::vector<std::string> expected =
        k < kFilesPerSave ? std::vector<std::string>{"global_step1"} : std::vector<std::string>{"global_step1", "global_step2"};
    EXPECT_EQ(complete, expected) << "file " << k;
    test::TinyRun run(test::solo(), cfg, big);
    EXPECT_EQ(run.engine().load_checkpoint(dir.path()).global_step, 1);
    run.train_to(2);  // and it trains on
    run.engine().save_checkpoint(dir.path());  // over the debris of the killed save
    EXPECT_EQ(ckpt::CheckpointReader(dir.path()).tag(), "global_step2");
    EXPECT_TRUE(ckpt::stale_temp_files(dir.path()).empty()) << "the save left the killed one's temp file";
  }
}

// ---- what a checkpoint holds besides the units ----------------------------------------------

namespace {

// A parameter on the root, a frozen parameter, a buffer and a child module.
struct OddModuleImpl : torch::nn::Module {
  OddModuleImpl() {
    scale = register_parameter("scale", at::ones({3}));
    frozen = register_parameter("frozen", at::arange(2, at::kFloat), /*requires_grad=*/false);
    seen = register_buffer("seen", at::zeros({1}, at::kLong));
    fc = register_module("fc", torch::nn::Linear(3, 3));
  }
  at::Tensor scale, frozen, seen;
  torch::nn::Linear fc{nullptr};
};
TORCH_MODULE(OddModule);

}  // namespace

TEST(EngineCheckpoint, RootParametersBuffersAndFrozenParametersRoundTripByName) {
  TempDir dir;
  Config config =
      Config::parse(R"({"train_batch_size": 1, "optimizer": {"type": "SGD", "params": {"lr": 0.1}}})");
  config.resolve(1);
  OddModule m;
  Engine engine(m.ptr(), config, test::solo());
  at::Tensor fc_weight = m->fc->weight.detach().clone();
  engine.save_checkpoint(dir.path());
  ckpt::CheckpointReader ck(dir.path());
  ASSERT_EQ(ck.manifest().units.at(0).name, "root");
  EXPECT_EQ(ck.manifest().units[0].slots.at(0).name, "scale");  // the state-dict name, not "root.scale"
  std::vector<std::string> saved;
  for (const auto& [name, t] : ck.load_model_states().module) saved.push_back(name);
  EXPECT_EQ(saved, (std::vector<std::string>{"scale", "frozen", "fc.weight", "fc.bias", "seen"}));
  {
    at::NoGradGuard no_grad;
    m->frozen.fill_(7);
    m->seen.fill_(9);
    m->fc->weight.fill_(1);
  }
  engine.load_checkpoint(dir.path());
  EXPECT_TRUE(at::equal(m->frozen, at::arange(2, at::kFloat)));
  EXPECT_EQ(m->seen.item<int64_t>(), 0);
  EXPECT_TRUE(at::equal(m->fc->weight, fc_weight));
}

// ---- bad input ----------------------------------------------------------------------------

TEST(EngineCheckpointErrors, AnotherModelIsNamedByItsFirstMismatchingParameterAndBothShapes) {
  TempDir dir;
  auto solo = test::solo();
  test::TinyRun saved(solo, config(0, 1, kAdamW));
  saved.train_to(1);
  saved.engine().save_checkpoint(dir.path());

  test::TinyRun wider(solo, config(0, 1, kAdamW), {2, 48});
  at::Tensor before = wider.result().weights;
  EXPECT_ERROR_HAS(wider.engine().load_checkpoint(dir.path()),
                   "the checkpoint does not match the model: parameter wte.weight has shape [256, 32] in the "
                   "checkpoint but [256, 48] in the model");
  EXPECT_TRUE(at::equal(wider.result().weights, before)) << "a failed load changed the weights";
  EXPECT_EQ(wider.engine().global_step(), 0);

  test::TinyRun deeper(solo, config(0, 1, kAdamW), {3, 32});
  EXPECT_ERROR_HAS(deeper.engine().load_checkpoint(dir.path()),
                   "parameter blocks.2.ln1.weight [32] of the model is not in the checkpoint");
  test::TinyRun shallower(solo, config(0, 1, kAdamW), {1, 32});
  EXPECT_ERROR_HAS(shallower.engine().load_checkpoint(dir.path()), "the checkpoint's parameter blocks.1.");
}

TEST(EngineCheckpointErrors, AnotherOptimizerMissingDirectoriesAndSavesInsideAWindowAreRefused) {
  TempDir dir;
  auto solo = test::solo();
  test::TinyRun adam(solo, config(0, 1, kAdamW));
  adam.engine().save_checkpoint(dir / "adam");
  test::TinyRun sgd(solo, config(0, 1, kSgd));
  EXPECT_ERROR_HAS(
      sgd.engine().load_checkpoint(dir / "adam"),
      "the checkpoint's optimizer AdamW keeps states (exp_avg, exp_avg_sq) but this engine's SGD keeps "
      "(momentum_buffer)");
  EXPECT_ERROR_HAS(sgd.engine().load_checkpoint(dir / "nowhere"), "does not exist");
  std::filesystem::create_directory(dir / "empty");
  EXPECT_ERROR_HAS(sgd.engine().load_checkpoint(dir / "empty"), "no checkpoint in");
  EXPECT_ERROR_HAS(sgd.engine().load_checkpoint(dir / "adam", "global_step7"),
                   "checkpoint tag 'global_step7' not found");
  EXPECT_ERROR_HAS(sgd.engine().save_checkpoint(dir / "x", "", nlohmann::json::array({1})),
                   "client_state must be a JSON object, got array");
  sgd.engine().save_checkpoint(dir / "x", "", {});  // `{}` converts to JSON null: an empty client state
  EXPECT_EQ(sgd.engine().load_checkpoint(dir / "x").client_state, nlohmann::json::object());
  EXPECT_ERROR_HAS(sgd.engine().save_checkpoint(dir / "x", "../up"),
                   "checkpoint tag \"../up\" must be one path component");

  test::TinyRun accumulating(solo, config(0, 1, kSgd, "", 2));  // 2 micro-batches per step
  accumulating.train_to(1);
  bool once = false;
  EXPECT_ERROR_HAS(
      accumulating.train_to(2,
                            [&](Engine& e, int) {
                              if (once)
                                e.save_checkpoint(dir / "mid");  // after the first micro-batch's backward
                              once = true;
                            }),
      "save_checkpoint inside an accumulation window (1 of 2 micro-batches done");
}

TEST(EngineCheckpointErrors, ACorruptShardOnlyOneRankReadsFailsEveryRankWithItsMessage) {
  TempDir dir;
  test::run_ranks(2, [&](comm::Communicator& c) {
    test::TinyRun run(c.shared_from_this(), config(1, 2, kSgd));
    run.train_to(2);
    run.engine().save_checkpoint(dir.path());
  });
  const std::string shard = dir / ("global_step2/" + ckpt::optim_states_name(1));
  flip_byte(shard, *ckpt::file_size(shard) / 2);
  test::RankRun quick;
  quick.comm_timeout =
      std::chrono::seconds(10);  // without the agreement, rank 0 would wait here and time out
  test::run_ranks(
      2,
      [&](comm::Communicator& c) {
        test::TinyRun run(c.shared_from_this(), config(1, 2, kSgd));
        // At the saved layout rank 0 reads only part 0, which is fine; it must still fail, with rank 1's
        // reason.
        std::string error = test::error_of([&] { run.engine().load_checkpoint(dir.path()); });
        EXPECT_NE(error.find("rank 1: checkpoint file " + shard + " is corrupt: its xxh64 is"),
                  std::string::npos)
            << error;
        run.train_to(1);  // the ranks are still in step: training goes on
      },
      quick);
}

TEST(EngineCheckpointErrors, RanksPassingDifferentTagsSaveUnderRankZerosOrFail) {
  TempDir dir;
  test::run_ranks(2, [&](comm::Communicator& c) {
    test::TinyRun warn(c.shared_from_this(), config(1, 2, kSgd));  // tag_validation "Warn", the default
    EXPECT_EQ(warn.engine().save_checkpoint(dir / "warn", ds::str("tag", c.rank())), dir / "warn/tag0");
    EXPECT_EQ(warn.engine().load_checkpoint(dir / "warn").tag, "tag0");
    test::TinyRun fail(c.shared_from_this(),
                       config(1, 2, kSgd, R"(, "checkpoint": {"tag_validation": "Fail"})"));
    EXPECT_ERROR_HAS(fail.engine().save_checkpoint(dir / "fail", ds::str("tag", c.rank())),
                     "the ranks passed different checkpoint tags");
  });
}

TEST(EngineCheckpointErrors, NodeLocalStorageIsRefusedAtStartUp) {
  // Rank 0 commits after checking every rank's file on disk: the directory must be shared.
  EXPECT_ERROR_HAS(
      test::TinyRun(test::solo(), config(0, 1, kSgd, R"(, "checkpoint": {"use_node_local_storage": true})")),
      "checkpoint.use_node_local_storage");
}
