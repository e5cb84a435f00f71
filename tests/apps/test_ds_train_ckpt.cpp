// ds-train's checkpoint flags end to end, as a user runs them:
// * a run stopped at step 10 and resumed by a NEW ds-train process (--load) is bit-exact
//   against an uninterrupted run: the same losses in the metrics CSV (all 17 digits), and
//   the same final checkpoint (every file's xxh64 in the manifest, and `ds-ckpt to-fp32`'s
//   safetensors byte for byte), at ZeRO stages 0, 1 and 2 on 2 ranks, over 2 pipeline
//   stages with ZeRO-1 (kPipeline) and over 2 tensor-parallel ranks (kTensor), whose
//   checkpoint also resumes at tensor size 1 (2 data ranks) to 1e-5 of the same losses;
// * --save-interval saves at the right steps, resuming at --steps trains nothing;
// * bad --load input ends with one error line and exit status 1.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <sstream>

#include "../launch/launch_test_util.h"

using namespace ds_test;
using ds::test::flip_byte;

namespace {

std::string bin(const std::string& name) {
  const char* dir = std::getenv("DS_BIN_DIR");
  return std::string(dir ? dir : DS_APPS_DIR) + "/" + name;
}

// --d-model 32 is the default of the helpers below unless the arguments set it.
const std::vector<std::string> kSmallModel = {"--n-layer",       "1", "--n-head", "2", "--eval-examples", "8",
                                              "--eval-interval", "0", "--plot",   ""};

std::vector<std::string> with(std::vector<std::string> args, const std::vector<std::string>& more) {
  args.insert(args.end(), more.begin(), more.end());
  return args;
}

// ds-train's arguments for the small model, then `args`.
std::vector<std::string> small_model(const std::vector<std::string>& args) {
  bool width = std::find(args.begin(), args.end(), "--d-model") != args.end();
  return with(
      with(kSmallModel, width ? std::vector<std::string>{} : std::vector<std::string>{"--d-model", "32"}),
      args);
}

// The CSV's rows without the timing columns (step, loss, lr, grad_norm, loss_scale, skipped).
std::vector<std::string> metric_rows(const std::string& csv) {
  std::vector<std::string> rows;
  auto lines = lines_of(read_file(csv));
  for (size_t i = 1; i < lines.size(); ++i) {
    size_t end = 0;
    for (int field = 0; field < 6 && end != std::string::npos; ++field)
      end = lines[i].find(',', end + (field > 0));
    rows.push_back(lines[i].substr(0, end));
  }
  return rows;
}


}  // namespace

constexpr int kPipeline = 10;  // the parameter for 2 pipeline stages x ZeRO-1
constexpr int kTensor = 11;    // the parameter for 2 tensor-parallel ranks x ZeRO-1

class DsTrainResume : public ::testing::TestWithParam<int> {};

TEST_P(DsTrainResume, ANewProcessContinuesBitForBit) {
  const bool pipeline = GetParam() == kPipeline, tensor = GetParam() == kTensor;
  const int stage = pipeline || tensor ? 1 : GetParam();
  TempDir dir;
  // total_num_steps is fixed at 20: "auto" would follow --steps, and the 10-step run would
  // then decay its learning rate over 10 steps -- another schedule, not an interruption.
  std::string config =
      dir.write("ds_config.json", R"({"train_batch_size": 8, "train_micro_batch_size_per_gpu": 4,
    "optimizer": {"type": "AdamW", "params": {"lr": 0.003, "weight_decay": 0.01}},
    "scheduler": {"type": "WarmupDecayLR", "params": {"warmup_max_lr": 0.003, "warmup_num_steps": 5, "total_num_steps": 20}},
    "gradient_clipping": 1.0, "zero_optimization": {"stage": )" +
                                      std::to_string(stage) + "}" + (pipeline ? R"(, "pipeline": {"stages": 2})" : "") +
                                      (tensor ? R"(, "tensor_parallel": {"autotp_size": 2})" : "") + "}");
  auto train_with = [&](const std::string& cfg, const std::vector<std::string>& args) {
    RunOutput r = run_launch(with({"--num_procs", "2", bin("ds-train"), "--config", cfg}, small_model(args)), 120);
    EXPECT_EQ(r.exit_code(), 0) << diag(r);
    return r;
  };
  auto train = [&](const std::vector<std::string>& args) { return train_with(config, args); };
  train({"--steps", "20", "--save", dir.file("whole"), "--metrics", dir.file("whole.csv")});
  train({"--steps", "10", "--save", dir.file("parts"), "--metrics", dir.file("first.csv")});
  if (tensor) {  // the tensor-2 checkpoint resumed at tensor size 1 x 2 data ranks: slices joined
    std::string text = read_file(config);
    text.replace(text.find(R"("autotp_size": 2)"), 16, R"("autotp_size": 1)");
    train_with(dir.write("tp1.json", text), {"--steps", "20", "--load", dir.file("parts"), "--metrics", dir.file("tp1.csv")});
    auto whole = metric_rows(dir.file("whole.csv")), tp1 = metric_rows(dir.file("tp1.csv"));
    ASSERT_EQ(tp1.size(), 10u);
    ASSERT_EQ(whole.size(), 20u);
    auto loss = [](const std::string& row) { return std::stod(row.substr(row.find(',') + 1)); };
    for (size_t i = 0; i < 10; ++i) EXPECT_NEAR(loss(tp1[i]), loss(whole[10 + i]), 1e-5) << "step " << 11 + i;
  }
  RunOutput resumed = train({"--steps", "20", "--load", dir.file("parts"), "--save", dir.file("parts"),
                             "--metrics", dir.file("second.csv")});
  EXPECT_NE(resumed.out.find("ds-train: loaded checkpoint " + dir.file("parts") + "/global_step10 (step 10)"),
            std::string::npos)
      << resumed.out;
  EXPECT_NE(resumed.out.find("ds-train: saved checkpoint " + dir.file("parts") + "/global_step20 (step 20"),
            std::string::npos)
      << resumed.out;

  auto whole = metric_rows(dir.file("whole.csv")), first = metric_rows(dir.file("first.csv")),
       second = metric_rows(dir.file("second.csv"));
  ASSERT_EQ(whole.size(), 20u);
  ASSERT_EQ(first.size(), 10u);
  ASSERT_EQ(second.size(), 10u);
  for (size_t i = 0; i < 10; ++i) {
    EXPECT_EQ(first[i], whole[i]);
    EXPECT_EQ(second[i], whole[10 + i]);  // "step,loss,lr,grad_norm,loss_scale,skipped", losses in 17 digits
  }
  // The final checkpoints are the same bytes: their manifests list every file's size and
  // xxh64 (weights, fp32 masters, Adam states, RNG) and the counters.
  EXPECT_EQ(read_file(dir.file("parts/latest")), "global_step20");
  EXPECT_EQ(read_file(dir.file("parts/global_step20/manifest.json")),
            read_file(dir.file("whole/global_step20/manifest.json")));
  for (const char* name : {"whole", "parts"}) {
    Spawned p({bin("ds-ckpt"), "to-fp32", dir.file(name), dir.file(std::string(name) + "_fp32")});
    RunOutput r = p.wait(60);
    ASSERT_EQ(r.exit_code(), 0) << diag(r);
  }
  std::string a = read_file(dir.file("whole_fp32.safetensors")),
              b = read_file(dir.file("parts_fp32.safetensors"));
  EXPECT_GT(a.size(), 21472u * 4) << "the consolidated weights are missing";
  EXPECT_TRUE(a == b) << "the consolidated fp32 weights differ";
}

INSTANTIATE_TEST_SUITE_P(Stages, DsTrainResume, ::testing::Values(0, 1, 2, kPipeline, kTensor), [](const auto& info) {
  if (info.param == kPipeline) return std::string("pipeline2_stage1");
  if (info.param == kTensor) return std::string("tensor2_stage1");
  return "stage" + std::to_string(info.param);
});

TEST(DsTrainCheckpoint, SaveIntervalResumeAtTheEndAndBadLoadInput) {
  TempDir dir;
  auto ds_train = [&](const std::vector<std::string>& args) {
    Spawned p(with({bin("ds-train")}, small_model(args)));
    return p.wait(60);
  };
  RunOutput saved = ds_train({"--steps", "4", "--save", dir.file("ck"), "--save-interval", "3"});
  ASSERT_EQ(saved.exit_code(), 0) << diag(saved);
  EXPECT_EQ(read_file(dir.file("ck/latest")), "global_step4");
  EXPECT_TRUE(std::ifstream(dir.file("ck/global_step3/manifest.json")).good()) << saved.out;
  int save_lines = 0;
  for (const auto& l : lines_of(saved.out)) save_lines += l.rfind("ds-train: saved checkpoint ", 0) == 0;
  EXPECT_EQ(save_lines, 2) << saved.out;  // at step 3 and at the end

  RunOutput done = ds_train({"--steps", "4", "--load", dir.file("ck")});
  EXPECT_EQ(done.exit_code(), 0) << diag(done);
  EXPECT_NE(done.out.find("the checkpoint is at step 4, --steps is 4: nothing to train"), std::string::npos)
      << done.out;

  std::filesystem::create_directory(dir.file("empty"));
  const std::string shard = dir.file("ck/global_step4/zero_pp_rank_0_mp_rank_00_optim_states.pt");
  struct Bad {
    const char* what;
    std::vector<std::string> args;
    std::string message;
  };
  const std::vector<Bad> cases = {
      {"missing directory",
       {"--load", dir.file("none")},
       "checkpoint directory " + dir.file("none") + " does not exist"},
      {"empty directory", {"--load", dir.file("empty")}, "no checkpoint in " + dir.file("empty")},
      {"another model",
       {"--load", dir.file("ck"), "--d-model", "48"},
       "the checkpoint does not match the model: parameter wte.weight has shape [256, 32] in the checkpoint "
       "but "
       "[256, 48] in the model"},
      {"corrupt shard", {"--load", dir.file("ck")}, "checkpoint file " + shard + " is corrupt"},
  };
  for (const auto& c : cases) {
    if (c.what == std::string("corrupt shard")) flip_byte(shard, 4000);
    RunOutput r = ds_train(with({"--steps", "6"}, c.args));
    EXPECT_EQ(r.exit_code(), 1) << c.what << ": " << diag(r);
    auto lines = lines_of(r.err);
    ASSERT_EQ(lines.size(), 1u) << c.what << ": " << r.err;
    EXPECT_EQ(lines[0].rfind("ds-train: error: ", 0), 0u) << c.what << ": " << lines[0];
    EXPECT_NE(lines[0].find(c.message), std::string::npos) << c.what << ": " << lines[0];
  }
}
