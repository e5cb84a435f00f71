// Runs the built ds-ckpt binary: inspect's report, to-fp32's files, one-line errors, exit codes.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>

#include "ckpt_test_util.h"
#include "ds/ckpt/consolidate.h"
#include "ds/ckpt/safetensors.h"
#include "ds/common/error.h"

namespace ds::ckpt {
namespace {

using test::TempDir;

struct RunResult {
  int exit_code = -1;
  std::string out, err;
};

std::string bin_dir() {
  const char* dir = std::getenv("DS_BIN_DIR");
  return dir ? dir : DS_CKPT_TEST_BIN_DIR;
}

RunResult run_tool(const TempDir& scratch, const std::string& args) {
  std::string base = scratch.path() + "/tool";
  std::string cmd = ds::str("'", bin_dir(), "/ds-ckpt' ", args, " >", base, ".out 2>", base, ".err");
  int status = std::system(cmd.c_str());
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, test::slurp(base + ".out"),
          test::slurp(base + ".err")};
}

size_t count_lines(const std::string& s) { return size_t(std::count(s.begin(), s.end(), '\n')); }

struct Saved {
  TempDir dir, scratch;
  std::vector<UnitInfo> units = test::toy_units(8);
  test::FullState full = test::random_state(units, 2, 4);
  Saved() {
    test::save_as_ranks(dir.path(), units, full, {PartitionScheme::kTensorSplit, 3}, "global_step42");
  }
};

TEST(DsCkptTool, InspectPrintsLayoutFilesAndVerifiesChecksums) {
  Saved s;
  RunResult r = run_tool(s.scratch, "inspect '" + s.dir.path() + "'");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.err, "");
  EXPECT_NE(r.out.find("tag: global_step42 (from latest)\n"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find(
                "layout: dp 3, pp 1, tp 1; ZeRO stage 2; 3 optimizer files (tensor_split); precision bf16\n"),
            std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("optimizer: AdamW (exp_avg, exp_avg_sq)\n"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("engine: global_steps 42, global_samples 1344, optimizer_steps 41, skipped_steps 1, "
                       "scheduler_iteration 40, loss_scale 1024\n"),
            std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("parameters: 91 in 9 tensors, 4 units (112 elements with padding)\n"),
            std::string::npos)
      << r.out;
  for (const std::string& name :
       {model_states_name(), optim_states_name(0), optim_states_name(1), optim_states_name(2)}) {
    auto at = r.out.find("  " + name);
    ASSERT_NE(at, std::string::npos) << name << "\n" << r.out;
    std::string line = r.out.substr(at, r.out.find('\n', at) - at);
    EXPECT_NE(line.find("xxh64 " + to_hex(CheckpointReader(s.dir.path()).manifest().find_file(name)->xxh64)),
              std::string::npos)
        << line;
    EXPECT_EQ(line.substr(line.size() - 2), "ok") << line;
  }
  EXPECT_NE(r.out.find("checksums: all 4 files ok"), std::string::npos) << r.out;

  r = run_tool(s.scratch, "inspect '" + s.dir.path() + "' --tag global_step42 --params");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out.find("(from latest)"), std::string::npos);
  EXPECT_NE(r.out.find("  unit blocks.1: 20 elements, padded 24\n    blocks.1.w [5, 3] at 0\n"),
            std::string::npos)
      << r.out;
}

TEST(DsCkptTool, InspectReportsACorruptFileOnOneLineAndExitsOne) {
  Saved s;
  std::string path = s.dir.path() + "/global_step42/" + optim_states_name(1);
  std::string bytes = test::slurp(path);
  bytes[100] ^= 1;
  test::spit(path, bytes);
  RunResult r = run_tool(s.scratch, "inspect '" + s.dir.path() + "'");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(count_lines(r.err), 1u) << r.err;
  EXPECT_EQ(r.err.rfind("ds-ckpt: error: checkpoint file " + path + " is corrupt: its xxh64 is ", 0), 0u)
      << r.err;
  EXPECT_NE(r.out.find(optim_states_name(1)), std::string::npos);
  EXPECT_NE(r.out.find("BAD"), std::string::npos) << r.out;
}

TEST(DsCkptTool, ToFp32WritesPtAndSafetensorsWithTheMasterWeights) {
  Saved s;
  std::string out = s.scratch.path() + "/model";
  RunResult r = run_tool(s.scratch, "to-fp32 '" + s.dir.path() + "' '" + out + "'");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("tag global_step42: 10 tensors, 91 parameters\n"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("wrote " + out + ".pt ("), std::string::npos) << r.out;
  auto pt = read_torch_state_dict(out + ".pt");
  auto st = read_safetensors(out + ".safetensors");
  ASSERT_EQ(pt.size(), 10u);
  ASSERT_EQ(st.tensors.size(), 10u);
  EXPECT_EQ(st.metadata.at("tag"), "global_step42");
  for (size_t i = 0; i < 9; ++i) {
    const std::string& name = pt[i].first;
    at::Tensor want = test::param_of(s.units, s.full, name);
    EXPECT_TRUE(test::bit_equal(pt[i].second, want)) << name;
    EXPECT_EQ(st.tensors[i].first, name);
    EXPECT_TRUE(test::bit_equal(st.tensors[i].second, want)) << name;
  }
  EXPECT_EQ(pt[9].first, "head.steps");  // a buffer, from the model states, in its own dtype
  EXPECT_TRUE(test::bit_equal(pt[9].second, at::arange(5, at::kLong)));
}

TEST(DsCkptTool, ErrorsAreOneLineWithExitCodes) {
  TempDir empty, scratch;
  RunResult r = run_tool(scratch, "inspect '" + empty.path() + "'");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.err, "ds-ckpt: error: no checkpoint in " + empty.path() +
                       ": it has no 'latest' file and no complete checkpoint tag\n");
  r = run_tool(scratch, "to-fp32 '" + empty.path() + "/none' '" + scratch.path() + "/x'");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.err, "ds-ckpt: error: checkpoint directory " + empty.path() + "/none does not exist\n");
  r = run_tool(scratch, "convert x");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_EQ(r.err, "ds-ckpt: error: unknown command \"convert\" (commands: inspect, to-fp32)\n");
  r = run_tool(scratch, "to-fp32 onlyone");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_EQ(count_lines(r.err), 1u) << r.err;
  r = run_tool(scratch, "--help");
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_NE(r.out.find("to-fp32"), std::string::npos);
}

}  // namespace
}  // namespace ds::ckpt
