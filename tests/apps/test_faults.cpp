// What a hostile user and environment do to the tools, end to end: bad flags and files,
// ranks that disagree, the MPI backend without mpirun, NaN losses, killed runs that leave swap
// directories, stopped ranks. Each ends in one clear line and a non-zero exit (usage errors:
// 2, everything else: 1), at start-up where the problem is knowable then, never in a crash,
// a hang or a silent wrong result.
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <sstream>
#include <fstream>
#include <thread>

#include "../launch/launch_test_util.h"
#include "ds/common/error.h"

using namespace ds_test;

namespace {

std::string bin(const std::string& name) {
  const char* dir = std::getenv("DS_BIN_DIR");
  return std::string(dir ? dir : DS_APPS_DIR) + "/" + name;
}

const std::vector<std::string> kTiny = {"--n-layer", "1", "--n-head", "2", "--d-model", "32", "--eval-interval", "0",
                                        "--eval-examples", "8", "--plot", ""};

// ds-train with the tiny model's flags, `extra` taking precedence.
std::vector<std::string> train_args(std::vector<std::string> extra) {
  std::vector<std::string> argv = {bin("ds-train")};
  for (size_t i = 0; i + 1 < kTiny.size(); i += 2)
    if (std::find(extra.begin(), extra.end(), kTiny[i]) == extra.end()) argv.insert(argv.end(), {kTiny[i], kTiny[i + 1]});
  argv.insert(argv.end(), extra.begin(), extra.end());
  return argv;
}

// The one error line of a failed run (fails the test unless there is exactly one).
std::string error_line(const RunOutput& r, const std::string& prefix, const std::string& what) {
  std::vector<std::string> errors;
  for (const auto& l : lines_of(r.err))
    if (l.find("error: ") != std::string::npos) errors.push_back(l);
  EXPECT_EQ(errors.size(), 1u) << what << ": " << diag(r);
  if (errors.empty()) return "";
  EXPECT_NE(errors[0].find(prefix), std::string::npos) << what << ": " << errors[0];
  return errors[0];
}

std::string hostname() {
  char buf[256] = {};
  ::gethostname(buf, sizeof buf - 1);
  return buf;
}

}  // namespace

TEST(Faults, EveryBadFlagIsOneLineAndExitTwo) {
  struct Case {
    std::vector<std::string> args;
    const char* message;
  } cases[] = {
      {{"--steps", "0"}, "--steps: expected an integer from 1 to 1000000000, got \"0\""},
      {{"--seq-len", "0"}, "--seq-len: expected an integer from 1"},
      {{"--seq-len", "-5"}, "--seq-len: expected an integer from 1"},
      {{"--threads", "-3"}, "--threads: expected an integer from 1 to 1024, got \"-3\""},
      {{"--threads", "100000"}, "--threads: expected an integer from 1 to 1024"},
      {{"--eval-interval", "-1"}, "--eval-interval: expected an integer from 0"},
      {{"--seed", "-2"}, "--seed: expected an integer from 0"},
      {{"--n-layer", "0"}, "--n-layer: expected an integer from 1"},
      {{"--stepz", "3"}, "--stepz"},
  };
  for (const auto& c : cases) {
    std::vector<std::string> argv = {bin("ds-train")};
    argv.insert(argv.end(), c.args.begin(), c.args.end());
    RunOutput r = Spawned(argv).wait(30);
    EXPECT_EQ(r.exit_code(), 2) << c.message << ": " << diag(r);
    std::string line = error_line(r, "ds-train: error: ", c.message);
    EXPECT_NE(line.find(c.message), std::string::npos) << line;
  }
}

TEST(Faults, BadFilesAndImpossibleSizesAreNamedBeforeTraining) {
  TempDir dir;
  const std::string a_file = dir.write("a_file", "x");
  const std::string json = dir.write("c.json", R"({"train_batch_size": 8})");
  const std::string huge = dir.write("huge.json", R"({"train_batch_size": 2000000000, "optimizer": {"type": "SGD", "params": {"lr": 0.1}}})");
  const std::string empty_nvme = dir.write("nvme.json", R"({"train_batch_size": 8, "zero_optimization": {"stage": 2, "offload_optimizer": {"device": "nvme", "nvme_path": ""}}})");
  const std::string bucket = dir.write("bucket.json", R"({"train_batch_size": 8, "zero_optimization": {"reduce_bucket_size": 0}})");
  const std::string too_many = dir.write("ac.json", R"({"train_batch_size": 8, "activation_checkpointing": {"number_checkpoints": 3}})");
  const std::string no_count = dir.write("ac2.json", R"({"train_batch_size": 8, "activation_checkpointing": {"contiguous_memory_optimization": true}})");
  const std::string profile_to = dir.write("fp.json", R"({"train_batch_size": 8, "optimizer": {"type": "SGD", "params": {"lr": 0.1}}, "flops_profiler": {"enabled": true, "output_file": ")" +
                                                          dir.file("no/such/dir/profile.txt") + R"("}})");
  struct Case {
    std::vector<std::string> args;
    std::string message;
  } cases[] = {
      {{"--data", dir.path()}, "is not a regular file (a directory)"},
      {{"--data", "/dev/zero"}, "is not a regular file (a device, pipe or socket)"},
      {{"--save", a_file}, "--save " + a_file + ": exists and is not a directory"},
      {{"--plot", dir.file("no/such/dir/loss.svg")}, "--plot: directory " + dir.file("no/such/dir") + " does not exist"},
      {{"--load", json}, json + " is not a directory"},
      {{"--config", huge}, "of activations, more than this machine's"},
      {{"--config", empty_nvme}, "offload_optimizer.nvme_path: is empty"},
      {{"--config", bucket}, "reduce_bucket_size: expected an integer >= 1"},
      {{"--config", too_many}, "activation_checkpointing.number_checkpoints is 3 but the model has 1 block to checkpoint"},
      {{"--config", no_count}, "contiguous_memory_optimization: needs number_checkpoints"},
      {{"--config", profile_to}, "flops_profiler.output_file: cannot write '" + dir.file("no/such/dir/profile.txt")},
  };
  for (const auto& c : cases) {
    const auto start = std::chrono::steady_clock::now();
    RunOutput r = Spawned(train_args(c.args)).wait(60);
    EXPECT_EQ(r.exit_code(), 1) << c.message << ": " << diag(r);
    std::string line = error_line(r, "ds-train: error: ", c.message);
    EXPECT_NE(line.find(c.message), std::string::npos) << line;
    EXPECT_EQ(r.out.find("step 1"), std::string::npos) << "trained before failing: " << r.out;
    (void)start;
  }
  // ds-config validate refuses what ds-train refuses, and a document nested 50,000 deep.
  RunOutput v = Spawned({bin("ds-config"), "validate", bucket}).wait(30);
  EXPECT_EQ(v.exit_code(), 1) << diag(v);
  error_line(v, "ds-config: error: ", "reduce_bucket_size");
  const std::string deep = dir.write("deep.json", "{\"x\": " + std::string(50000, '[') + std::string(50000, ']') + "}");
  v = Spawned({bin("ds-config"), "validate", deep}).wait(30);
  EXPECT_EQ(v.exit_code(), 1) << diag(v);
  EXPECT_NE(error_line(v, "ds-config: error: ", "deep").find("nested deeper than 64 levels"), std::string::npos);
}

// A profile step the run never reaches is a warning at start-up (and at the end), not an error.
TEST(Faults, AFlopsProfileStepOutsideTheRunIsAWarning) {
  TempDir dir;
  const std::string json = dir.write("fp.json", R"({"train_batch_size": 4, "optimizer": {"type": "SGD", "params": {"lr": 0.1}}, "flops_profiler": {"enabled": true, "profile_step": 5}})");
  RunOutput r = Spawned(train_args({"--config", json, "--steps", "2"})).wait(60);
  EXPECT_EQ(r.exit_code(), 0) << diag(r);
  EXPECT_NE(r.err.find("warning: flops_profiler.profile_step 5 is outside this run (steps 0 to 1 are trained"),
            std::string::npos)
      << diag(r);
  EXPECT_NE(r.err.find("warning: flops_profiler: no profile: profile_step 5 was never reached (the run took 2 steps"),
            std::string::npos)
      << diag(r);
  EXPECT_EQ(r.out.find("Flops Profiler"), std::string::npos) << r.out;
}

TEST(Faults, TheMpiBackendWithoutMpirunIsRefused) {
  TempDir dir;
  RunOutput r = run_launch({"--num_procs", "2", "--env", "DS_COMM_BACKEND=mpi", bin("ds-train"), "--steps", "2",
                            "--plot", "", "--save", dir.file("ck")},
                           120);
  EXPECT_NE(r.exit_code(), 0) << diag(r);
  EXPECT_NE(r.err.find("DS_COMM_BACKEND=mpi, but MPI sees a world of 1 while RANK/WORLD_SIZE says 2"), std::string::npos)
      << diag(r);
  EXPECT_FALSE(std::filesystem::exists(dir.file("ck/global_step2"))) << "each rank trained alone";
}

TEST(Faults, RanksThatDisagreeNameTheRankAndTheFirstDifference) {
  TempDir dir;
  const std::string s2 = dir.write("s2.json", R"({"train_batch_size": 8, "zero_optimization": {"stage": 2}})");
  const std::string s3 = dir.write("s3.json", R"({"train_batch_size": 8, "zero_optimization": {"stage": 3}})");
  // Rank 1 is started with other arguments than rank 0.
  auto launch = [&](const std::string& rank0, const std::string& rank1) {
    std::string tiny;
    for (const auto& a : kTiny)
      if (a != "--d-model" && a != "32") tiny += " '" + a + "'";
    const std::string cmd = "if [ \"$RANK\" = 0 ]; then exec '" + bin("ds-train") + "' --steps 2" + tiny + " " + rank0 +
                            "; else exec '" + bin("ds-train") + "' --steps 2" + tiny + " " + rank1 + "; fi";
    return run_launch({"--num_procs", "2", "sh", "-c", cmd}, 120);
  };
  RunOutput model = launch("--d-model 32", "--d-model 64");
  EXPECT_EQ(model.exit_code(), 1) << diag(model);
  EXPECT_NE(model.err.find("the ranks disagree on the model: rank 1 has \"wte: wte.weight [256, 64]\" "
                           "where rank 0 has \"wte: wte.weight [256, 32]\""),
            std::string::npos)
      << diag(model);
  RunOutput stage = launch("--config " + s2, "--config " + s3);
  EXPECT_EQ(stage.exit_code(), 1) << diag(stage);
  EXPECT_NE(stage.err.find("the ranks disagree on the config: rank 1 has "), std::string::npos) << diag(stage);
  EXPECT_NE(stage.err.find("\"/zero_optimization/stage = 3\" vs \"/zero_optimization/stage = 2\""), std::string::npos)
      << diag(stage);
  EXPECT_EQ(stage.err.find("SIGABRT"), std::string::npos) << diag(stage);
}

TEST(Faults, NonFiniteLossesStopNamingTheStepOrAreSkipped) {
  TempDir dir;
  const std::string wild = dir.write("wild.json", R"({"train_batch_size": 8, "optimizer": {"type": "SGD", "params": {"lr": 1e8}}})");
  RunOutput r = Spawned(train_args({"--config", wild, "--steps", "6", "--save", dir.file("ck"), "--save-interval", "1"})).wait(120);
  EXPECT_EQ(r.exit_code(), 1) << diag(r);
  std::string line = error_line(r, "ds-train: error: step ", "nan loss");
  EXPECT_NE(line.find("has no loss scaling to absorb a non-finite value"), std::string::npos) << line;
  // Whatever was saved before is finite, and `latest` names it.
  if (std::filesystem::exists(dir.file("ck/latest"))) {
    RunOutput inspect = Spawned({bin("ds-ckpt"), "to-fp32", dir.file("ck"), dir.file("w")}).wait(60);
    EXPECT_EQ(inspect.exit_code(), 0) << diag(inspect);
  }
  RunOutput skip = Spawned(train_args({"--config", wild, "--steps", "6", "--skip-nonfinite"})).wait(120);
  EXPECT_EQ(skip.exit_code(), 0) << diag(skip);
}

TEST(Faults, SwapDirectoriesGoWithTheRunAndWhatKilledRunsLeftIsRemoved) {
  TempDir swap("ds_faults_swap", "/tmp");
  const std::string cfg = swap.write(
      "c.json", ds::str(R"({"train_batch_size": 8, "optimizer": {"type": "AdamW", "params": {"lr": 0.001}}, )",
                        R"("zero_optimization": {"stage": 2, "sub_group_size": 4096, "offload_optimizer": {"device": "nvme", "nvme_path": ")",
                        swap.path(), R"("}}})"));
  auto swap_dirs = [&] {
    std::vector<std::string> out;
    for (const auto& e : std::filesystem::directory_iterator(swap.path()))
      if (e.is_directory()) out.push_back(e.path().filename().string());
    return out;
  };
  // 1. SIGTERM (a launcher stopping the job, Ctrl-C) in the middle of training.
  Spawned launcher(launch_argv({"--num_procs", "2", bin("ds-train"), "--config", cfg, "--steps", "100000", "--n-layer",
                                "1", "--n-head", "2", "--d-model", "32", "--plot", ""}));
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (swap_dirs().size() < 2 && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  ASSERT_EQ(swap_dirs().size(), 2u) << "the ranks never made their swap directories";
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  ::kill(launcher.pid(), SIGTERM);
  RunOutput r = launcher.wait(60);
  EXPECT_EQ(r.exit_code(), 128 + SIGTERM) << diag(r);
  EXPECT_EQ(swap_dirs(), std::vector<std::string>{}) << "left behind after SIGTERM";
  // 2. What a SIGKILLed run left (its process is gone) is removed by the next run; a
  // directory of another host is named with the command to remove it.
  pid_t dead = ::fork();
  if (dead == 0) ::_exit(0);
  ::waitpid(dead, nullptr, 0);
  const std::string stale = ds::str("ds-swap-rank0@", hostname(), "@", dead, "-abcdef");
  const std::string foreign = "ds-swap-rank0@some-other-host@1-abcdef";
  std::filesystem::create_directories(swap.file(stale));
  swap.write(stale + "/optimizer_states.swp", std::string(4096, 'x'));
  std::filesystem::create_directories(swap.file(foreign));
  RunOutput next = Spawned(train_args({"--config", cfg, "--steps", "2"})).wait(120);
  EXPECT_EQ(next.exit_code(), 0) << diag(next);
  EXPECT_NE(next.err.find("removed " + swap.file(stale) + ", left by process " + std::to_string(dead) + " that is gone"),
            std::string::npos)
      << diag(next);
  EXPECT_NE(next.err.find("belongs to a run on another host; if that run is over, remove it: rm -rf '" + swap.file(foreign)),
            std::string::npos)
      << diag(next);
  EXPECT_EQ(swap_dirs(), std::vector<std::string>{foreign});
}

TEST(Faults, ACheckpointOfAnotherModelWithTheSameShapesIsRefused) {
  TempDir dir;
  RunOutput save = Spawned(train_args({"--steps", "2", "--save", dir.file("ck")})).wait(120);
  ASSERT_EQ(save.exit_code(), 0) << diag(save);
  // --n-head 4 instead of 2: every parameter has the same shape.
  std::vector<std::string> argv = train_args({"--steps", "3", "--load", dir.file("ck")});
  for (size_t i = 0; i + 1 < argv.size(); ++i)
    if (argv[i] == "--n-head") argv[i + 1] = "4";
  RunOutput load = Spawned(argv).wait(120);
  EXPECT_EQ(load.exit_code(), 1) << diag(load);
  std::string line = error_line(load, "ds-train: error: ", "another model");
  EXPECT_NE(line.find("was trained with GPT 1 layers x 2 heads"), std::string::npos) << line;
  EXPECT_NE(line.find("this run builds GPT 1 layers x 4 heads"), std::string::npos) << line;
}

TEST(Faults, AStoppedRankIsNamedAtOnceByTheLauncher) {
  TempDir dir;
  Spawned launcher(launch_argv({"--num_procs", "2", DS_LAUNCH_PROBE, "--pid-dir", dir.path(), "--wait-pids", dir.path(),
                                "2", "--kill-self", "1:19", "--sleep", "600"}));
  auto pids = wait_for_pids(dir, 2, 10.0);
  ASSERT_EQ(pids.size(), 2u);
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  ::kill(launcher.pid(), SIGTERM);
  RunOutput r = launcher.wait(30);
  EXPECT_NE(r.err.find("ds-launch: warning: rank 1 (pid " + std::to_string(pids[1]) + ") was stopped by SIGSTOP"),
            std::string::npos)
      << diag(r);
  expect_all_gone(pids);
}

TEST(Faults, AioBenchRefusesBlocksLargerThanTheFile) {
  TempDir dir("ds_faults_aio", "/tmp");
  RunOutput r = Spawned({bin("ds-aio-bench"), dir.path(), "--size", "1M", "--block-sizes", "4M"}).wait(60);
  EXPECT_EQ(r.exit_code(), 2) << diag(r);  // a bad argument: usage
  EXPECT_NE(error_line(r, "ds-aio-bench: error: ", "block").find("4M is larger than the file"), std::string::npos);
}

// ds-estimate: the per-rank parts and the table; bad flags exit 2; a run that fits nowhere at
// its layout exits 1 with one line naming what would fit; a pipeline's stages and bubble.
TEST(Faults, DsEstimatePrintsThePartsAndSaysWhatWouldFit) {
  RunOutput ok = Spawned({bin("ds-estimate"), "--n-layer", "2", "--n-head", "2", "--d-model", "64", "--seq-len", "64",
                          "--vocab", "256", "--ranks-per-node", "2", "--scale", "1,8,1000"})
                     .wait(30);
  EXPECT_EQ(ok.exit_code(), 0) << diag(ok);
  for (const char* part : {"= model states", "activations", "= peak RSS", "step: ", "every choice", "scaling"})
    EXPECT_NE(ok.out.find(part), std::string::npos) << part << "\n" << ok.out;
  RunOutput bad = Spawned({bin("ds-estimate"), "--stage", "5"}).wait(30);
  EXPECT_EQ(bad.exit_code(), 2) << diag(bad);
  error_line(bad, "ds-estimate: error: ", "--stage");
  RunOutput big = Spawned({bin("ds-estimate"), "--params", "2e10", "--n-layer", "44", "--n-head", "48", "--d-model",
                           "6144", "--seq-len", "2048", "--ranks-per-node", "2"})
                      .wait(30);
  EXPECT_EQ(big.exit_code(), 1) << diag(big);
  const std::string line = error_line(big, "ds-estimate: error: ", "does not fit");
  EXPECT_NE(line.find("ZeRO stage 3"), std::string::npos) << line;
  // A config's batch with the accumulation left out (derived: 8 / (2 x 1 data rank) = 4) in 2
  // pipeline stages: each stage's ranks and the bubble; a tensor size that does not divide
  // the heads is one line.
  TempDir dir;
  const std::string config = dir.write("c.json", R"({"train_batch_size": 8, "train_micro_batch_size_per_gpu": 2,
    "optimizer": {"type": "AdamW", "params": {"lr": 1e-4}}, "pipeline": {"stages": 2}})");
  RunOutput piped = Spawned({bin("ds-estimate"), "--config", config, "--n-layer", "4", "--n-head", "2", "--d-model", "64",
                             "--seq-len", "64", "--vocab", "256", "--ranks-per-node", "2"})
                        .wait(30);
  EXPECT_EQ(piped.exit_code(), 0) << diag(piped);
  for (const char* part : {"micro-batch 2 x accumulation 4 = global batch 8", "pipeline 2 x tensor 1 x data 1",
                           "each stage's ranks: stage 0", "(pipeline bubble "})
    EXPECT_NE(piped.out.find(part), std::string::npos) << part << "\n" << piped.out;
  // Only the accumulation in the config: the micro-batch is 1.
  const std::string accum = dir.write("a.json", R"({"gradient_accumulation_steps": 3,
    "optimizer": {"type": "AdamW", "params": {"lr": 1e-4}}})");
  RunOutput accumulated = Spawned({bin("ds-estimate"), "--config", accum, "--n-layer", "2", "--n-head", "2", "--d-model",
                                   "64", "--seq-len", "64", "--vocab", "256"})
                              .wait(30);
  EXPECT_EQ(accumulated.exit_code(), 0) << diag(accumulated);
  EXPECT_NE(accumulated.out.find("micro-batch 1 x accumulation 3 = global batch 3"), std::string::npos) << accumulated.out;
  RunOutput split = Spawned({bin("ds-estimate"), "--n-layer", "2", "--n-head", "3", "--d-model", "48", "--seq-len", "64",
                             "--vocab", "256", "--ranks-per-node", "2", "--tensor", "2"})
                        .wait(30);
  EXPECT_EQ(split.exit_code(), 1) << diag(split);
  error_line(split, "ds-estimate: error: ", "autotp_size 2 does not divide the heads (3)");
  // --params: the vocabulary takes the rest, a multiple of the tensor size so that it splits.
  RunOutput sized = Spawned({bin("ds-estimate"), "--params", "1.3e9", "--n-layer", "24", "--n-head", "16", "--d-model",
                             "2048", "--seq-len", "2048", "--ranks-per-node", "8", "--tensor", "8", "--checkpoint", "--ram-gib", "64"})
                        .wait(30);
  EXPECT_EQ(sized.exit_code(), 0) << diag(sized);
  EXPECT_NE(sized.out.find("pipeline 1 x tensor 8 x data 1"), std::string::npos) << sized.out;
  EXPECT_NE(sized.out.find("vocab 42576:"), std::string::npos) << sized.out;  // 42579 rounded down to 8s
}

// mpirun with the Gloo backend: the ranks come from OpenMPI's variables, the rendezvous on
// loopback at a port derived from the job id (one node), and the start-up line says so.
TEST(Faults, MpirunWithGlooTakesItsRanksFromOpenMpi) {
  if (!std::filesystem::exists("/usr/bin/mpirun")) GTEST_SKIP() << "no /usr/bin/mpirun (openmpi-bin)";
  std::vector<std::string> argv = {"/usr/bin/mpirun", "--allow-run-as-root", "--oversubscribe", "--bind-to", "none",
                                   "--mca", "plm_rsh_agent", "false", "-np", "2", "-x", "DS_COMM_BACKEND=gloo"};
  const auto train = train_args({"--steps", "3", "--task", "reverse"});
  argv.insert(argv.end(), train.begin(), train.end());
  RunOutput r = Spawned(argv).wait(120);
  EXPECT_EQ(r.exit_code(), 0) << diag(r);
  EXPECT_NE(r.out.find("[ds] rank 0 of 2 (local 0) from OpenMPI, master 127.0.0.1:"), std::string::npos) << diag(r);
  EXPECT_NE(r.out.find("2 ranks x micro-batch"), std::string::npos) << diag(r);
}

// A token file of a text's bytes (written by python3 in llm.c's format) trains exactly as the
// text does; a token beyond --vocab-size is one line before training.
TEST(Faults, ATokenFileOfATextsBytesTrainsLikeTheTextAndBadTokensAreNamed) {
  TempDir dir;
  std::string text;
  for (int i = 0; i < 400; ++i) text += "To be, or not to be, that is the question " + std::to_string(i * 7 % 13) + "\n";
  const std::string txt = dir.write("t.txt", text);
  const std::string bin_file = dir.file("t.bin");
  const std::string py = dir.write("w.py",
                                   "import struct,sys\n"
                                   "b = open(sys.argv[1], 'rb').read()\n"
                                   "with open(sys.argv[2], 'wb') as f:\n"
                                   "    f.write(struct.pack('<256i', 20240520, 1, len(b), *([0] * 253)))\n"
                                   "    f.write(struct.pack('<%dH' % len(b), *b))\n");
  ASSERT_EQ(std::system(("/usr/bin/python3 " + py + " " + txt + " " + bin_file).c_str()), 0);
  auto done_line = [](const RunOutput& r) {
    for (const auto& l : lines_of(r.out))
      if (l.find("ds-train: done:") != std::string::npos) return l.substr(0, l.rfind(", ", l.find(" tokens/s")));
    return std::string("<no done line>");
  };
  RunOutput as_text = Spawned(train_args({"--data", txt, "--steps", "4", "--seq-len", "32"})).wait(60);
  RunOutput as_tokens = Spawned(train_args({"--data", bin_file, "--vocab-size", "256", "--steps", "4", "--seq-len", "32"})).wait(60);
  EXPECT_EQ(as_text.exit_code(), 0) << diag(as_text);
  EXPECT_EQ(as_tokens.exit_code(), 0) << diag(as_tokens);
  EXPECT_NE(done_line(as_text).find("final loss"), std::string::npos) << diag(as_text);
  EXPECT_EQ(done_line(as_tokens), done_line(as_text));  // the same windows, losses bit for bit
  RunOutput small = Spawned(train_args({"--data", bin_file, "--vocab-size", "100", "--steps", "2", "--seq-len", "32"})).wait(60);
  EXPECT_EQ(small.exit_code(), 1) << diag(small);
  EXPECT_NE(error_line(small, "ds-train: error: ", "vocab").find("outside --vocab-size 100 (raise it to at least 118)"),
            std::string::npos);
}

// Hugging Face GPT-2 weights through the tools: a small GPT-2 written by Python
// (tests/models/gpt2_reference.py) starts ds-train on 2 ranks at ZeRO stage 3 with a learning
// rate of 0, is saved, and `ds-ckpt to-fp32 --hf` writes HF files whose logits in the Python
// reference equal those of the original file. Shapes come from the file, heads from its
// config.json; without one, or with byte data for a 97-token vocabulary, one line.
TEST(Faults, Gpt2WeightsGoInThroughDsTrainAndOutThroughDsCkptUnchanged) {
  TempDir dir;
  const std::string py = std::string(std::getenv("DS_SOURCE_DIR") ? std::getenv("DS_SOURCE_DIR") : DS_SOURCE_DIR_FALLBACK) +
                         "/tests/models/gpt2_reference.py";
  ASSERT_EQ(std::system(("/usr/bin/python3 " + py + " make " + dir.path() + " 2 4 32 97 48 3").c_str()), 0);
  const std::string tokens = dir.write("w.py",
                                       "import struct,sys\n"
                                       "t = [(i * 31 + 7) % 97 for i in range(4000)]\n"
                                       "with open(sys.argv[1], 'wb') as f:\n"
                                       "    f.write(struct.pack('<256i', 20240520, 1, len(t), *([0] * 253)))\n"
                                       "    f.write(struct.pack('<%dH' % len(t), *t))\n");
  ASSERT_EQ(std::system(("/usr/bin/python3 " + tokens + " " + dir.file("t.bin")).c_str()), 0);
  const std::string config = dir.write("ds.json", R"({"train_batch_size": 4, "steps_per_print": 1,
      "optimizer": {"type": "AdamW", "params": {"lr": 0.0, "weight_decay": 0.0}},
      "zero_optimization": {"stage": 3}})");
  const std::string weights = dir.file("model.safetensors");
  RunOutput r = Spawned({bin("ds-launch"), "--num_procs", "2", bin("ds-train"), "--init", weights, "--data",
                         dir.file("t.bin"), "--seq-len", "32", "--steps", "2", "--config", config, "--save",
                         dir.file("ck"), "--plot", "", "--eval-examples", "8"})
                    .wait(120);
  ASSERT_EQ(r.exit_code(), 0) << diag(r);
  EXPECT_NE(r.out.find("GPT 2 layers x 4 heads x 32 wide, context 32, vocab 97, GELU tanh"), std::string::npos) << diag(r);
  EXPECT_NE(r.out.find("ds-train: loaded " + weights), std::string::npos) << diag(r);
  const std::string out = dir.file("hf");
  RunOutput c = Spawned({bin("ds-ckpt"), "to-fp32", dir.file("ck"), out, "--hf"}).wait(60);
  ASSERT_EQ(c.exit_code(), 0) << diag(c);
  EXPECT_NE(c.out.find("wrote " + out + "/config.json"), std::string::npos) << diag(c);
  std::filesystem::copy_file(dir.file("tokens.bin"), out + "/tokens.bin");
  ASSERT_EQ(std::system(("/usr/bin/python3 " + py + " forward " + out + " 32").c_str()), 0);
  std::ifstream a(dir.file("logits.bin"), std::ios::binary), b(out + "/logits_check.bin", std::ios::binary);
  std::vector<float> x(2 * 32 * 97), y(x.size());
  a.read(reinterpret_cast<char*>(x.data()), std::streamsize(x.size() * 4));
  b.read(reinterpret_cast<char*>(y.data()), std::streamsize(y.size() * 4));
  ASSERT_TRUE(a.good() && b.good());
  float worst = 0;
  for (size_t i = 0; i < x.size(); ++i) worst = std::max(worst, std::abs(x[i] - y[i]));
  EXPECT_LT(worst, 1e-5) << "the exported weights are not the loaded ones";

  std::filesystem::remove(dir.file("config.json"));
  RunOutput heads = Spawned({bin("ds-train"), "--init", weights, "--data", dir.file("t.bin"), "--steps", "1"}).wait(60);
  EXPECT_EQ(heads.exit_code(), 1) << diag(heads);
  EXPECT_NE(error_line(heads, "ds-train: error: ", "no heads").find("give --n-head"), std::string::npos);
  RunOutput bytes = Spawned({bin("ds-train"), "--init", weights, "--n-head", "4", "--steps", "1"}).wait(60);
  EXPECT_EQ(bytes.exit_code(), 1) << diag(bytes);
  EXPECT_NE(error_line(bytes, "ds-train: error: ", "bytes").find("has a vocabulary of 97 tokens"), std::string::npos);
}

// Long start-up phases say what they do and how far they are (thresholds set to 0 here, so
// even this small run reports): the optimizer's and the weights' swap files, ZeRO-3's first
// gathers, a checkpoint's read of the swapped optimizer states.
TEST(Faults, LongStartUpPhasesSayWhatTheyDoAndHowFar) {
  TempDir dir;
  const std::string config = dir.write("nvme.json", R"({"train_batch_size": 8, "bf16": {"enabled": true},
      "optimizer": {"type": "AdamW", "params": {"lr": 1e-3}},
      "zero_optimization": {"stage": 3, "offload_optimizer": {"device": "nvme", "nvme_path": ")" + dir.path() + R"("},
                            "offload_param": {"device": "nvme", "nvme_path": ")" + dir.path() + R"("}}})");
  std::vector<std::string> argv = {"/usr/bin/env", "DS_PROGRESS_QUIET=0", "DS_PROGRESS_EVERY=0"};
  const auto train = train_args({"--config", config, "--steps", "1", "--n-layer", "2"});
  argv.insert(argv.end(), train.begin(), train.end());
  argv.insert(argv.end(), {std::string("--save"), dir.file("ck")});
  RunOutput r = Spawned(argv).wait(120);
  ASSERT_EQ(r.exit_code(), 0) << diag(r);
  for (const char* line : {"[ds] offload_optimizer nvme: writing the initial states to the swap file: done (",
                           "[ds] offload_param nvme: writing the weight shards to the swap file: 60% (3 of 5 units) after ",
                           "[ds] ZeRO-3: gathering the units of the first forward: done (5 units) in ",
                           "[ds] checkpoint: reading the optimizer states from the swap file: done (5 units) in "})
    EXPECT_NE(r.out.find(line), std::string::npos) << line << "\n" << diag(r);
  // With the defaults a run this small says nothing of the kind.
  RunOutput quiet = Spawned(train).wait(120);
  ASSERT_EQ(quiet.exit_code(), 0) << diag(quiet);
  EXPECT_EQ(quiet.out.find("gathering the units"), std::string::npos) << diag(quiet);
}
