// The multi-node driver on one host: the "remote shell" is `env DS_FAKE_HOST={host}`, so each
// node's ds-launch runs here, but through exactly the path a real ssh launch takes (world info,
// per-node mode, stdin watch, error lines passed back). Also the mpirun mode.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <regex>

#include "launch_test_util.h"

using namespace ds_test;

namespace {

const char* kFakeRemote = "env DS_FAKE_HOST={host}";

class FakeCluster : public ::testing::Test {
 protected:
  void SetUp() override {
    hostfile_ = dir_.write("hostfile", "# two fake hosts\nnodea slots=2\nnodeb slots=2\n");
  }

  std::vector<std::string> driver_args(std::vector<std::string> extra) {
    std::vector<std::string> args = {"--hostfile",    hostfile_,   "--launcher_cmd", kFakeRemote,
                                     "--master_addr", "127.0.0.1", "--kill_timeout", "2"};
    args.insert(args.end(), extra.begin(), extra.end());
    return args;
  }

  TempDir dir_;
  std::string hostfile_;
};

bool have_mpirun() { return ::system("command -v mpirun >/dev/null 2>&1") == 0; }

}  // namespace

TEST_F(FakeCluster, EveryRankOfEveryNodeGetsItsEnvironmentAndReachesTheMaster) {
  RunOutput r = run_launch(driver_args({"--env", "EXTRA=hello", probe_bin(), "--print-env", "--rendezvous"}));
  ASSERT_EQ(r.exit_code(), 0) << diag(r);
  EXPECT_EQ(r.err, "");
  auto envs = env_lines(r.out);
  ASSERT_EQ(envs.size(), 4u) << diag(r);
  for (int i = 0; i < 4; ++i) {
    auto& e = envs[static_cast<size_t>(i)];
    EXPECT_EQ(e["_prefix"], "[rank" + std::to_string(i) + "]:");
    EXPECT_EQ(e["RANK"], std::to_string(i));
    EXPECT_EQ(e["WORLD_SIZE"], "4");
    EXPECT_EQ(e["LOCAL_RANK"], std::to_string(i % 2));
    EXPECT_EQ(e["LOCAL_WORLD_SIZE"], "2");
    EXPECT_EQ(e["NODE_RANK"], std::to_string(i / 2));
    EXPECT_EQ(e["GROUP_RANK"], std::to_string(i / 2));
    EXPECT_EQ(e["DS_FAKE_HOST"], i < 2 ? "nodea" : "nodeb");
    EXPECT_EQ(e["MASTER_ADDR"], "127.0.0.1");
    EXPECT_EQ(e["MASTER_PORT"], envs[0]["MASTER_PORT"]);
    EXPECT_EQ(e["EXTRA"], "hello");
    EXPECT_NE(r.out.find("[rank" + std::to_string(i) + "]: RANK=" + std::to_string(i) + " CONNECTED=1"),
              std::string::npos);
  }
}

TEST_F(FakeCluster, SshStyleTemplateQuotesTheCommandThroughARemoteShell) {
  // A stand-in for ssh: drops -o options, takes the host, runs the command string with sh -c,
  // exactly as sshd hands it to the remote user's shell.
  std::string ssh = dir_.write("ssh",
                               "#!/bin/sh\n"
                               "while [ \"$1\" = -o ]; do shift 2; done\n"
                               "host=$1; shift\n"
                               "DS_FAKE_HOST=$host exec sh -c \"$*\"\n");
  ASSERT_EQ(::chmod(ssh.c_str(), 0755), 0);
  std::vector<std::string> args =
      driver_args({"--env", "EXTRA=it's \"quoted\" $HOME", probe_bin(), "--print-env"});
  args[3] = ssh + " -o BatchMode=yes {host}";  // no {cmd}: appended for ssh
  RunOutput r = run_launch(args);
  ASSERT_EQ(r.exit_code(), 0) << diag(r);
  auto envs = env_lines(r.out);
  ASSERT_EQ(envs.size(), 4u) << diag(r);
  EXPECT_EQ(envs[3]["DS_FAKE_HOST"], "nodeb");
  for (int i = 0; i < 4; ++i)
    EXPECT_NE(r.out.find("[rank" + std::to_string(i) + "]: RANK=" + std::to_string(i)), std::string::npos);
  EXPECT_NE(r.out.find("EXTRA=it's \"quoted\" $HOME NETNS="), std::string::npos) << r.out;
}

TEST_F(FakeCluster, IncludePicksHostsAndSlots) {
  RunOutput r = run_launch(driver_args({"--include", "nodea:1@nodeb:0", probe_bin(), "--print-env"}));
  ASSERT_EQ(r.exit_code(), 0) << diag(r);
  auto envs = env_lines(r.out);
  ASSERT_EQ(envs.size(), 2u) << diag(r);
  EXPECT_EQ(envs[0]["DS_FAKE_HOST"], "nodea");
  EXPECT_EQ(envs[0]["DS_SLOT"], "1");
  EXPECT_EQ(envs[1]["DS_FAKE_HOST"], "nodeb");
  EXPECT_EQ(envs[1]["DS_SLOT"], "0");
  EXPECT_EQ(envs[1]["WORLD_SIZE"], "2");
}

TEST_F(FakeCluster, FailingRemoteRankIsNamedWithItsHostAndEveryRankStops) {
  RunOutput r = run_launch(driver_args({probe_bin(), "--pid-dir", dir_.path(), "--wait-pids", dir_.path(),
                                        "4", "--exit", "3:7", "--sleep", "600"}),
                           20);
  EXPECT_EQ(r.exit_code(), 7) << diag(r);
  auto pids = wait_for_pids(dir_, 4, 1.0);
  ASSERT_EQ(pids.size(), 4u);
  auto errors = error_lines(r.err);
  ASSERT_EQ(errors.size(), 1u) << diag(r);
  EXPECT_EQ(errors[0], "ds-launch: error: rank 3 (pid " + std::to_string(pids[3]) +
                           ") on nodeb exited with status 7; stopped the other 3 ranks");
  expect_all_gone(pids);
}

TEST_F(FakeCluster, SigtermToTheDriverReachesEveryRankOnEveryNode) {
  Spawned driver(launch_argv(
      driver_args({probe_bin(), "--on-term-write", dir_.path(), "--pid-dir", dir_.path(), "--sleep", "600"})));
  auto pids = wait_for_pids(dir_, 4, 10.0);
  ASSERT_EQ(pids.size(), 4u);
  ASSERT_EQ(::kill(driver.pid(), SIGTERM), 0);
  RunOutput r = driver.wait(15.0);
  EXPECT_EQ(r.exit_code(), 128 + SIGTERM) << diag(r);
  for (int i = 0; i < 4; ++i)
    EXPECT_EQ(read_file(dir_.file("term." + std::to_string(i))), "term") << "rank " << i;
  auto errors = error_lines(r.err);
  ASSERT_EQ(errors.size(), 1u) << diag(r);
  EXPECT_EQ(errors[0], "ds-launch: error: received SIGTERM; stopped 2 nodes");
  expect_all_gone(pids);
}

TEST_F(FakeCluster, KillingTheDriverWithSigkillTakesEveryRankDown) {
  Spawned driver(launch_argv(driver_args({probe_bin(), "--pid-dir", dir_.path(), "--sleep", "600"})));
  auto pids = wait_for_pids(dir_, 4, 10.0);
  ASSERT_EQ(pids.size(), 4u);
  ASSERT_EQ(::kill(driver.pid(), SIGKILL), 0);
  driver.wait(5.0);
  expect_all_gone(pids);
}

TEST_F(FakeCluster, MissingProgramOnANodeIsReportedOnce) {
  RunOutput r = run_launch(driver_args({"/nonexistent/prog"}));
  EXPECT_NE(r.exit_code(), 0);
  auto errors = error_lines(r.err);
  ASSERT_EQ(errors.size(), 1u) << diag(r);
  EXPECT_NE(errors[0].find("(node"), std::string::npos) << errors[0];
  EXPECT_NE(errors[0].find("does not exist"), std::string::npos) << errors[0];
}

TEST_F(FakeCluster, FailingRemoteShellIsNamedByNodeAndHost) {
  std::vector<std::string> args = driver_args({"true"});
  args[3] = "false {host}";  // --launcher_cmd: the "remote shell" fails before starting anything
  RunOutput r = run_launch(args);
  EXPECT_EQ(r.exit_code(), 1) << diag(r);
  auto errors = error_lines(r.err);
  ASSERT_EQ(errors.size(), 1u) << diag(r);
  EXPECT_TRUE(std::regex_search(errors[0],
                                std::regex(R"(: node [01] \(node[ab], pid [0-9]+\) exited with status 1)")))
      << errors[0];
}

TEST_F(FakeCluster, DryRunPrintsOneSshCommandPerNode) {
  RunOutput r = run_launch({"--hostfile", hostfile_, "--master_addr", "10.9.9.9", "--master_port", "1234",
                            "--dry_run", "--env", "K=a b", "prog", "x y"});
  ASSERT_EQ(r.exit_code(), 0) << diag(r);
  auto lines = lines_of(r.out);
  ASSERT_EQ(lines.size(), 2u) << diag(r);
  for (int i = 0; i < 2; ++i) {
    const std::string& l = lines[static_cast<size_t>(i)];
    EXPECT_EQ(l.rfind(std::string("ssh -o BatchMode=yes node") + (i == 0 ? "a" : "b") + " '", 0), 0u) << l;
    EXPECT_NE(l.find("--node_rank=" + std::to_string(i)), std::string::npos) << l;
    EXPECT_NE(l.find("--world_info=nodea:0,1@nodeb:0,1 --master_addr=10.9.9.9 --master_port=1234"),
              std::string::npos)
        << l;
    EXPECT_NE(l.find("--env=K=a b"), std::string::npos) << l;
    EXPECT_NE(l.find("-- prog '\\''x y'\\''"), std::string::npos) << l;
  }
}

TEST_F(FakeCluster, MpirunDryRunBuildsTheCommandLine) {
  RunOutput r =
      run_launch({"--hostfile", hostfile_, "--launcher", "mpirun", "--master_addr", "10.9.9.9",
                  "--master_port", "1234", "--launcher_args", "--bind-to none", "--dry_run", "prog", "x"});
  ASSERT_EQ(r.exit_code(), 0) << diag(r);
  EXPECT_EQ(r.out.rfind("mpirun -np 4 --host nodea:2,nodeb:2 ", 0), 0u) << r.out;
  EXPECT_NE(r.out.find(" --bind-to none -x MASTER_ADDR=10.9.9.9 -x MASTER_PORT=1234 "), std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find(" -x PATH "), std::string::npos) << r.out;
  EXPECT_TRUE(ends_with(r.out, " prog x\n")) << r.out;
}

TEST(Mpirun, RunsLocalRanksThatSeeOpenMpiRanks) {
  if (!have_mpirun()) GTEST_SKIP() << "mpirun is not installed";
  // Keep OpenMPI on this host's loopback and shared memory.
  RunOutput r = run_launch(
      {"--launcher", "mpirun", "--launcher_args", "--mca btl self,vader --mca oob_tcp_if_include lo",
       "--num_procs", "2", "sh", "-c", "echo R=$OMPI_COMM_WORLD_RANK S=$OMPI_COMM_WORLD_SIZE M=$MASTER_ADDR"},
      25);
  ASSERT_EQ(r.exit_code(), 0) << diag(r);
  EXPECT_NE(r.out.find("R=0 S=2 M=127.0.0.1"), std::string::npos) << diag(r);
  EXPECT_NE(r.out.find("R=1 S=2 M=127.0.0.1"), std::string::npos) << diag(r);
}

TEST(Mpirun, FailingRankGivesNonZeroExit) {
  if (!have_mpirun()) GTEST_SKIP() << "mpirun is not installed";
  RunOutput r = run_launch(
      {"--launcher", "mpirun", "--launcher_args", "--mca btl self,vader --mca oob_tcp_if_include lo",
       "--num_procs", "2", "sh", "-c", "exit $((3 + OMPI_COMM_WORLD_RANK))"},
      25);
  EXPECT_NE(r.exit_code(), 0) << diag(r);
  auto errors = error_lines(r.err);
  ASSERT_EQ(errors.size(), 1u) << diag(r);
  EXPECT_NE(errors[0].find("mpirun (pid"), std::string::npos) << errors[0];
}
