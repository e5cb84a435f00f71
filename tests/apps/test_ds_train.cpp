// ds-train end to end, as a user runs it: the README's demo learns, runs with different rank
// counts / micro-batches / accumulation give the same per-step losses from the command line,
// and bad input ends with one error line and exit status 1.
#include <gtest/gtest.h>

#include <cstdio>
#include <sstream>

#include "../launch/launch_test_util.h"
#include "ds/common/error.h"

using namespace ds_test;

namespace {

std::string bin(const std::string& name) {
  const char* dir = std::getenv("DS_BIN_DIR");
  return std::string(dir ? dir : DS_APPS_DIR) + "/" + name;
}

// The `loss` column of a metrics CSV.
std::vector<double> losses_of(const std::string& csv) {
  std::istringstream in(read_file(csv));
  std::string line;
  std::getline(in, line);
  EXPECT_EQ(line.rfind("step,loss,", 0), 0u) << "header: " << line;
  std::vector<double> out;
  while (std::getline(in, line)) out.push_back(std::stod(line.substr(line.find(',') + 1)));
  return out;
}

const char* kSmallModel[] = {"--n-layer", "1", "--n-head", "2", "--d-model", "32"};

}  // namespace

TEST(DsTrain, ReadmeDemoReachesNinetyFivePercentHeldOutAccuracy) {
  TempDir dir;
  RunOutput r = run_launch({"--num_procs", "2", bin("ds-train"), "--task", "reverse", "--steps", "80", "--eval-interval", "0",
                            "--metrics", dir.file("m.csv"), "--plot", dir.file("loss.svg")}, 240);
  ASSERT_EQ(r.exit_code(), 0) << diag(r);
  auto at = r.out.find("held-out accuracy ", r.out.find("done:"));
  ASSERT_NE(at, std::string::npos) << r.out;
  double acc = std::stod(r.out.substr(at + 18));
  EXPECT_GE(acc, 0.95) << r.out;
  const std::vector<double> losses = losses_of(dir.file("m.csv"));
  EXPECT_EQ(losses.size(), 80u);
  // The curve the README shows falls without a jump (the old default config's loss went from
  // 3.3 to 10.8 at step 32 with this seed).
  for (size_t i = 1; i < losses.size(); ++i)
    EXPECT_LT(losses[i], losses[i - 1] * 1.3) << "loss jumps at step " << i + 1;
  EXPECT_EQ(read_file(dir.file("loss.svg")).rfind("<svg", 0), 0u);
}

TEST(DsTrain, LayoutsGiveTheSameLossesFromTheCommandLine) {
  TempDir dir;
  auto config = [&](const std::string& name, const std::string& batch) {
    return dir.write(name, "{" + batch + R"(, "optimizer": {"type": "SGD", "params": {"lr": 0.05, "momentum": 0.9}}})");
  };
  std::string one = config("one.json", R"("train_batch_size": 8)");
  std::string micro4 = config("micro4.json", R"("train_batch_size": 8, "train_micro_batch_size_per_gpu": 4)");
  auto train = [&](int ranks, const std::string& cfg, const std::string& csv) {
    std::vector<std::string> args = {"--num_procs", std::to_string(ranks), bin("ds-train"), "--config", cfg, "--steps", "10",
                                     "--eval-interval", "0", "--eval-examples", "8", "--plot", "", "--metrics", dir.file(csv)};
    args.insert(args.end(), std::begin(kSmallModel), std::end(kSmallModel));
    RunOutput r = run_launch(args, 120);
    EXPECT_EQ(r.exit_code(), 0) << diag(r);
    return losses_of(dir.file(csv));
  };
  auto base = train(1, one, "a.csv");            // 1 process x batch 8
  auto two = train(2, micro4, "b.csv");          // 2 ranks x micro 4
  auto accum = train(1, micro4, "c.csv");        // 1 process x micro 4 x accumulation 2
  // Pipelines: the tied embedding/head on two stages, 1F1B over the micro-batches.
  std::string pipe2 = config("pipe2.json", R"("train_batch_size": 8, "train_micro_batch_size_per_gpu": 4, "pipeline": {"stages": 2})");
  std::string pipe2x2 = config("pipe2x2.json", R"("train_batch_size": 8, "train_micro_batch_size_per_gpu": 2,
                                                 "pipeline": {"stages": 2}, "zero_optimization": {"stage": 1})");
  auto piped = train(2, pipe2, "d.csv");         // 2 stages x micro 4 x accumulation 2
  auto piped_dp = train(4, pipe2x2, "e.csv");    // 2 stages x 2 data-parallel x micro 2 x accumulation 2, ZeRO-1
  // Tensor parallelism: heads, MLP and vocabulary split over 2 ranks; and with 2 stages.
  std::string tp2 = config("tp2.json", R"("train_batch_size": 8, "tensor_parallel": {"autotp_size": 2})");
  std::string tp2pipe2 = config("tp2pipe2.json", R"("train_batch_size": 8, "train_micro_batch_size_per_gpu": 4,
                                                   "tensor_parallel": {"autotp_size": 2}, "pipeline": {"stages": 2})");
  auto split = train(2, tp2, "f.csv");
  auto split_piped = train(4, tp2pipe2, "g.csv");
  ASSERT_EQ(base.size(), 10u);
  for (size_t i = 0; i < base.size(); ++i) {
    EXPECT_NEAR(two[i], base[i], 1e-5) << "step " << i + 1;
    EXPECT_NEAR(accum[i], base[i], 1e-5) << "step " << i + 1;
    EXPECT_NEAR(piped[i], base[i], 1e-5) << "step " << i + 1;
    EXPECT_NEAR(piped_dp[i], base[i], 1e-5) << "step " << i + 1;
    EXPECT_NEAR(split[i], base[i], 1e-5) << "step " << i + 1;
    EXPECT_NEAR(split_piped[i], base[i], 1e-5) << "step " << i + 1;
  }
}

struct BadInput {
  const char* what;
  std::vector<std::string> args;
  const char* message;
};

TEST(DsTrain, BadInputIsOneErrorLineAndExitOne) {
  TempDir dir;
  std::string tiny = dir.write("tiny.txt", std::string(100, 'x'));
  std::string nvme = dir.write("nvme.json", R"({"train_batch_size": 8, "optimizer": {"type": "AdamW"}, "zero_optimization": {"stage": 3, "offload_param": {"device": "nvme", "nvme_path": "/nonexistent/swap"}}})");
  std::string pipe = dir.write("pipe.json", R"({"train_batch_size": 8, "pipeline": {"stages": 2}})");
  std::string typo = dir.write("typo.json", R"({"train_batch_size": 8, "zero_optimization": {"stgae": 0}})");
  std::vector<BadInput> cases = {
      {"missing data file", {"--data", dir.file("nope.txt")}, "cannot read data file"},
      {"sequence longer than the data", {"--data", tiny, "--seq-len", "64"}, "too short for sequence length 64"},
      {"heads do not divide the width", {"--n-head", "3", "--d-model", "128"}, "not divisible by n_head 3"},
      {"context shorter than the task", {"--seq-len", "4"}, "shorter than the task's examples"},
      {"config the engine cannot honour", {"--config", nvme}, "offload_param"},
      {"typo in the config", {"--config", typo}, "did you mean \"stage\""},
      {"pipeline stages", {"--config", pipe}, "world size 1 is not divisible by pipeline stages 2"},
      {"missing config", {"--config", dir.file("none.json")}, "none.json"},
  };
  for (const auto& c : cases) {
    std::vector<std::string> argv = {bin("ds-train"), "--steps", "1", "--plot", ""};
    argv.insert(argv.end(), c.args.begin(), c.args.end());
    Spawned p(argv);
    RunOutput r = p.wait(60);
    EXPECT_EQ(r.exit_code(), 1) << c.what << ": " << diag(r);
    auto lines = lines_of(r.err);
    ASSERT_EQ(lines.size(), 1u) << c.what << ": " << r.err;
    EXPECT_EQ(lines[0].rfind("ds-train: error: ", 0), 0u) << c.what << ": " << lines[0];
    EXPECT_NE(lines[0].find(c.message), std::string::npos) << c.what << ": " << lines[0];
  }
}

namespace {

// `ranks` ranks of ds-train with `config` and `args` stop at start-up, every rank with one
// error line, and the output names `message`.
void expect_refused_on_every_rank(int ranks, const std::string& config, const std::vector<std::string>& args,
                                  const char* message) {
  std::vector<std::string> argv = {"--num_procs", std::to_string(ranks), bin("ds-train"), "--config", config, "--steps", "1",
                                   "--plot", ""};
  argv.insert(argv.end(), args.begin(), args.end());
  RunOutput r = run_launch(argv, 120);
  EXPECT_NE(r.exit_code(), 0) << diag(r);
  for (int rank = 0; rank < ranks; ++rank)
    EXPECT_NE(r.err.find(ds::str("[rank", rank, "]: ds-train: error: ")), std::string::npos) << diag(r);
  EXPECT_NE(r.err.find(message), std::string::npos) << diag(r);
}

}  // namespace

TEST(DsTrain, LayoutsThatCannotSplitTheModelStopAtStartUpOnEveryRank) {
  TempDir dir;
  std::string tp2 = dir.write("tp2.json", R"({"train_batch_size": 8, "tensor_parallel": {"autotp_size": 2}})");
  expect_refused_on_every_rank(2, tp2, {"--n-head", "3", "--d-model", "48"},
                               "tensor_parallel.autotp_size 2 does not divide the heads n_head 3");
  expect_refused_on_every_rank(2, tp2, {"--n-head", "1", "--d-model", "32"},
                               "tensor_parallel.autotp_size 2 does not divide the heads n_head 1");
}

// Ulysses sequence parallelism from the command line: the reverse task's 16 tokens split over
// 2 ranks at ZeRO-3, padded to 18 and split over 3 ranks at ZeRO-2, and over 2 sequence ranks
// in each stage of a 2-stage pipeline train to the 1-process run's losses; the 3-rank run's
// checkpoint resumes in one process (its padded context taken from the checkpoint); on text,
// the held-out loss (the slices' logits gathered) is one process's.
TEST(DsTrain, SequenceParallelismTrainsEvaluatesAndResumesAsOneProcess) {
  TempDir dir;
  auto config = [&](const std::string& name, const std::string& extra) {
    return dir.write(name, R"({"train_batch_size": 8, "optimizer": {"type": "AdamW", "params": {"lr": 3e-3}})" + extra + "}");
  };
  const std::vector<std::string> model = {"--n-layer", "1", "--n-head", "6", "--d-model", "48", "--eval-interval", "0",
                                          "--plot", ""};
  auto train = [&](int ranks, const std::string& cfg, const std::string& csv, std::vector<std::string> more) {
    std::vector<std::string> args = {"--num_procs", std::to_string(ranks), bin("ds-train"), "--config", cfg,
                                     "--metrics", dir.file(csv)};
    args.insert(args.end(), model.begin(), model.end());
    args.insert(args.end(), more.begin(), more.end());
    RunOutput r = run_launch(args, 180);
    EXPECT_EQ(r.exit_code(), 0) << diag(r);
    return std::make_pair(losses_of(dir.file(csv)), r.out);
  };
  const std::vector<std::string> task = {"--steps", "8", "--eval-examples", "16"};
  auto with = [&](std::vector<std::string> a, const std::vector<std::string>& b) {
    a.insert(a.end(), b.begin(), b.end());
    return a;
  };
  const auto one = train(1, config("one.json", ""), "one.csv", with(task, {"--seq-len", "18"})).first;
  const auto sp2 = train(2, config("sp2.json", R"(, "sequence_parallel_size": 2, "zero_optimization": {"stage": 3})"),
                         "sp2.csv", with(task, {"--seq-len", "18"})).first;
  const std::string sp3_config = config("sp3.json", R"(, "sequence_parallel_size": 3, "zero_optimization": {"stage": 2})");
  const auto [sp3, sp3_out] = train(3, sp3_config, "sp3.csv", {"--steps", "4", "--eval-examples", "16", "--save", dir.file("ck")});
  EXPECT_NE(sp3_out.find("each of 3 ranks takes 6 of every 16 tokens"), std::string::npos) << sp3_out;
  const auto resumed = train(1, config("one_again.json", ""), "resumed.csv",
                             with(task, {"--load", dir.file("ck")})).first;
  const auto piped = train(4, config("pp.json", R"(, "sequence_parallel_size": 2, "train_micro_batch_size_per_gpu": 4,
                                                   "pipeline": {"stages": 2}, "zero_optimization": {"stage": 1})"),
                           "pp.csv", with(task, {"--seq-len", "18"})).first;
  ASSERT_EQ(one.size(), 8u);
  ASSERT_EQ(sp3.size(), 4u);
  ASSERT_EQ(resumed.size(), 4u);
  for (size_t i = 0; i < 8; ++i) {
    EXPECT_NEAR(sp2.at(i), one[i], 1e-5) << "sequence 2, step " << i + 1;
    EXPECT_NEAR(piped.at(i), one[i], 1e-5) << "sequence 2 x pipe 2, step " << i + 1;
    EXPECT_NEAR(i < 4 ? sp3[i] : resumed[i - 4], one[i], 1e-5) << "sequence 3, then resumed in 1 process, step " << i + 1;
  }
  // Held-out loss on text: every rank's logits of whole sequences, gathered.
  std::string text;
  for (int i = 0; i < 200; ++i) text += "Now is the winter of our discontent made glorious summer " + std::to_string(i % 13) + "\n";
  const std::string data = dir.write("t.txt", text);
  auto held_out = [&](int ranks, const std::string& cfg, const std::string& csv) {
    const std::string out = train(ranks, cfg, csv, {"--data", data, "--seq-len", "18", "--steps", "6", "--eval-examples", "32"}).second;
    const auto at = out.find("held-out loss ", out.find("done:"));
    EXPECT_NE(at, std::string::npos) << out;
    return at == std::string::npos ? 0.0 : std::stod(out.substr(at + 14));
  };
  const double alone = held_out(1, config("t1.json", ""), "t1.csv");
  EXPECT_GT(alone, 0.0);
  EXPECT_NEAR(held_out(2, config("t2.json", R"(, "sequence_parallel_size": 2)"), "t2.csv"), alone, 2e-4);
  EXPECT_NEAR(held_out(3, config("t3.json", R"(, "sequence_parallel_size": 3)"), "t3.csv"), alone, 2e-4);
  // Text's default 64 tokens padded to 66 over 3 ranks, resumed in one process without
  // --seq-len: the examples keep 64 tokens and the model 66 (both from the checkpoint), so it
  // continues as the 3 ranks would have.
  const std::string t3 = config("t3p.json", R"(, "sequence_parallel_size": 3)");
  const auto whole = train(3, t3, "w.csv", {"--data", data, "--steps", "4", "--eval-examples", "4"}).first;
  train(3, t3, "h.csv", {"--data", data, "--steps", "2", "--eval-examples", "4", "--save", dir.file("tk")});
  const auto [rest, rest_out] = train(1, config("t1p.json", ""), "r.csv", {"--data", data, "--steps", "4", "--eval-examples", "4",
                                                                      "--load", dir.file("tk")});
  EXPECT_NE(rest_out.find("context 66"), std::string::npos) << rest_out;
  ASSERT_EQ(whole.size(), 4u);
  ASSERT_EQ(rest.size(), 2u);
  for (size_t i = 0; i < 2; ++i) EXPECT_NEAR(rest[i], whole[2 + i], 1e-5) << "resumed text, step " << 3 + i;
  // What cannot split stops at start-up on every rank, naming the key.
  const std::string bad = config("bad.json", R"(, "sequence_parallel_size": 3)");
  expect_refused_on_every_rank(3, bad, {"--seq-len", "16"},
                               "padded to 18 to split over 3 sequence-parallel ranks); use --seq-len 18");
  expect_refused_on_every_rank(3, bad, {"--n-head", "2", "--d-model", "32"},
                               "sequence_parallel_size 3 does not divide the 2 heads");
}

// sparse_attention in the config (per-head layouts: the heads' global blocks differ): every
// GPT block attends over the layout's kept blocks; 2 ranks at ZeRO-3, a 2-stage pipeline (1F1B
// over 2 micro-batches) and the heads split over a tensor group of 2 train to the 1-process
// stage-0 run's losses.
TEST(DsTrain, SparseAttentionTrainsAlikeAtStageThreeInAPipelineSplitOverHeadsAndInOneProcess) {
  TempDir dir;
  std::string text;
  for (int i = 0; i < 300; ++i) text += "Now is the winter of our discontent made glorious summer " + std::to_string(i % 17) + "\n";
  const std::string data = dir.write("t.txt", text);
  auto config = [&](int stage, const std::string& extra) {
    return dir.write(ds::str("s", stage, extra.size(), ".json"),
                     ds::str(R"({"train_batch_size": 8, "steps_per_print": 1, "optimizer": {"type": "AdamW", "params": {"lr": 1e-3}},
                                 "zero_optimization": {"stage": )", stage, R"(}, )", extra,
                             R"("sparse_attention": {"mode": "fixed", "block": 16, "num_local_blocks": 2, "attention": "unidirectional",
                                                     "different_layout_per_head": true, "num_different_global_patterns": 2}})"));
  };
  auto train = [&](int ranks, const std::string& cfg, const std::string& csv, const char* heads = "2") {
    std::vector<std::string> args = {"--num_procs", std::to_string(ranks), bin("ds-train"), "--config", cfg,
                                     "--data", data, "--seq-len", "64", "--steps", "6", "--n-layer", "2", "--n-head", heads,
                                     "--d-model", "32", "--plot", "", "--eval-examples", "16", "--eval-interval", "0",
                                     "--metrics", dir.file(csv)};
    RunOutput r = run_launch(args, 120);
    EXPECT_EQ(r.exit_code(), 0) << diag(r);
    EXPECT_NE(r.out.find("fixed block-sparse attention in blocks of 16"), std::string::npos) << diag(r);
    return losses_of(dir.file(csv));
  };
  const auto one = train(1, config(0, ""), "one.csv");
  const auto two = train(2, config(3, ""), "two.csv");
  const auto piped = train(2, config(0, R"("train_micro_batch_size_per_gpu": 4, "pipeline": {"stages": 2}, )"), "pipe.csv");
  const auto split = train(2, config(0, R"("tensor_parallel": {"autotp_size": 2}, )"), "tp.csv");
  // Ulysses: each rank attends over the whole 64 tokens with its head's own layout; with 4
  // heads over tensor 2 x sequence 2, rank (t, s) computes head 2 t + s of the layout.
  const auto ulysses = train(2, config(0, R"("sequence_parallel_size": 2, )"), "sp.csv");
  const auto one4 = train(1, config(0, ""), "one4.csv", "4");
  const auto both = train(4, config(1, R"("sequence_parallel_size": 2, "tensor_parallel": {"autotp_size": 2}, )"), "tpsp.csv", "4");
  ASSERT_EQ(ulysses.size(), 6u);
  ASSERT_EQ(both.size(), 6u);
  for (size_t i = 0; i < one.size(); ++i) {
    EXPECT_NEAR(ulysses[i], one[i], 1e-5) << "sequence 2, step " << i + 1;
    EXPECT_NEAR(both[i], one4.at(i), 1e-5) << "tensor 2 x sequence 2, step " << i + 1;
  }
  ASSERT_EQ(one.size(), 6u);
  ASSERT_EQ(two.size(), 6u);
  ASSERT_EQ(piped.size(), 6u);
  ASSERT_EQ(split.size(), 6u);
  for (size_t i = 0; i < one.size(); ++i) {
    EXPECT_NEAR(two[i], one[i], 1e-5) << "step " << i + 1;
    EXPECT_NEAR(piped[i], one[i], 1e-5) << "step " << i + 1;
    EXPECT_NEAR(split[i], one[i], 1e-5) << "step " << i + 1;
  }
}
