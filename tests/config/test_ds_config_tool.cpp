// Runs the built ds-config binary: exit codes, JSON on stdout, one-line errors and warnings on stderr.
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "config_test_util.h"

namespace ds {
namespace {

using ::testing::HasSubstr;

struct RunResult {
  int exit_code = -1;
  std::string out, err;
};

std::string bin_dir() {
  const char* dir = std::getenv("DS_BIN_DIR");
  return dir ? dir : DS_CONFIG_TEST_BIN_DIR;
}

std::string slurp(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// Runs "ds-config <args>" with stdout and stderr captured separately.
RunResult run_tool(const std::string& args) {
  std::string base = str(::testing::TempDir(), "ds_config_tool_", ::getpid());
  std::string cmd = str("'", bin_dir(), "/ds-config' ", args, " >", base, ".out 2>", base, ".err");
  int status = std::system(cmd.c_str());
  RunResult r;
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  r.out = slurp(base + ".out");
  r.err = slurp(base + ".err");
  std::remove((base + ".out").c_str());
  std::remove((base + ".err").c_str());
  return r;
}

size_t count_lines(const std::string& s) {
  size_t n = 0;
  for (char c : s) n += c == '\n';
  return n;
}

TEST(DsConfigTool, GoodFilePrintsResolvedJsonAndExitsZero) {
  RunResult r = run_tool(str("validate '", config_test::data_file("bf16_zero2.json"), "' --world-size 8"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.err, "");
  nlohmann::json j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["train_batch_size"], 256);
  EXPECT_EQ(j["gradient_accumulation_steps"], 4);
  EXPECT_EQ(j["zero_optimization"]["stage"], 2);
  EXPECT_EQ(j["aio"]["block_size"], 1048576);
  EXPECT_EQ(r.out, j.dump(2) + "\n");  // pretty, 2-space indent
}

TEST(DsConfigTool, WarningsGoToStderrAndJsonStillToStdout) {
  RunResult r = run_tool(str("validate '", config_test::data_file("zero3_nvme.json"), "' --world-size 2"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.err, HasSubstr("warning: "));
  EXPECT_THAT(r.err, HasSubstr("zero3_nvme.json: aio.thread_count: deprecated"));
  EXPECT_EQ(nlohmann::json::parse(r.out)["aio"]["intra_op_parallelism"], 1);
}

TEST(DsConfigTool, AutoConfigTakesBatchValuesFromFlags) {
  RunResult r = run_tool(str("validate '", config_test::data_file("hf_trainer_auto.json"),
                             "' --world-size 2 --micro-batch 4 --grad-accum 3 --total-steps 100"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  nlohmann::json j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["train_batch_size"], 24);
  EXPECT_EQ(j["scheduler"]["params"]["total_num_steps"], 100);
}

TEST(DsConfigTool, BadFileExitsOneWithOneErrorLine) {
  RunResult r = run_tool(str("validate '", config_test::data_file("bad_typo.json"), "'"));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.out, "");
  EXPECT_EQ(count_lines(r.err), 1u) << r.err;
  EXPECT_THAT(r.err, HasSubstr("ds-config: error: "));
  EXPECT_THAT(
      r.err,
      HasSubstr(
          "bad_typo.json: zero_optimization.overlap_com: unknown key (did you mean \"overlap_comm\"?)"));
}

TEST(DsConfigTool, BatchIdentityFailureExitsOneWithTheArithmetic) {
  RunResult r = run_tool(str("validate '", config_test::data_file("bf16_zero2.json"), "' --world-size 3"));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(count_lines(r.err), 1u) << r.err;
  EXPECT_THAT(r.err, HasSubstr("train_batch_size 256 is not a multiple of train_micro_batch_size_per_gpu 8 x "
                               "data-parallel size 3"));
}

TEST(DsConfigTool, MissingFileExitsOneNamingThePath) {
  RunResult r = run_tool("validate /nonexistent/ds_config.json");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.err, "ds-config: error: /nonexistent/ds_config.json: cannot open: No such file or directory\n");
}

TEST(DsConfigTool, UsageErrorsExitTwo) {
  for (const char* args :
       {"", "validate", "frobnicate x.json", "validate x.json --world-size 0", "validate x.json --bogus"}) {
    RunResult r = run_tool(args);
    EXPECT_EQ(r.exit_code, 2) << "args: " << args << " stderr: " << r.err;
    EXPECT_EQ(count_lines(r.err), 1u) << "args: " << args << " stderr: " << r.err;
    EXPECT_THAT(r.err, HasSubstr("ds-config: error: "));
  }
}

TEST(DsConfigTool, HelpExitsZero) {
  RunResult r = run_tool("--help");
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_THAT(r.out, HasSubstr("validate"));
}

}  // namespace
}  // namespace ds
