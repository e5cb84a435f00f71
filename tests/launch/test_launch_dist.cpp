// The real ds-launch binary starting real rank processes on this host (loopback only):
// environment, output prefixing, exit codes, failures, signals, orphans, bad input.
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <algorithm>
#include <map>

#include "launch_test_util.h"

using namespace ds_test;

namespace {

// Ranks that sleep this long never end on their own within a test: when they are gone, the
// launcher stopped them (the tests assert how, not how fast).
const char* kForever = "600";

class EnvPerWorldSize : public ::testing::TestWithParam<int> {};

}  // namespace

TEST_P(EnvPerWorldSize, EveryRankSeesItsRankWorldSizeAndOneMasterEndpoint) {
  const int n = GetParam();
  RunOutput r = run_launch({"--num_procs", std::to_string(n), probe_bin(), "--print-env"});
  ASSERT_EQ(r.exit_code(), 0) << diag(r);
  EXPECT_EQ(r.err, "");
  auto envs = env_lines(r.out);
  ASSERT_EQ(envs.size(), static_cast<size_t>(n)) << diag(r);
  for (int i = 0; i < n; ++i) {
    auto& e = envs[static_cast<size_t>(i)];
    EXPECT_EQ(e["_prefix"], "[rank" + std::to_string(i) + "]:");
    EXPECT_EQ(e["RANK"], std::to_string(i));
    EXPECT_EQ(e["LOCAL_RANK"], std::to_string(i));
    EXPECT_EQ(e["WORLD_SIZE"], std::to_string(n));
    EXPECT_EQ(e["LOCAL_WORLD_SIZE"], std::to_string(n));
    EXPECT_EQ(e["GROUP_RANK"], "0");
    EXPECT_EQ(e["NODE_RANK"], "0");
    EXPECT_EQ(e["MASTER_ADDR"], "127.0.0.1");
    EXPECT_EQ(e["MASTER_PORT"], envs[0]["MASTER_PORT"]);
    EXPECT_GT(std::stoi(e["MASTER_PORT"]), 0);
  }
}
INSTANTIATE_TEST_SUITE_P(WorldSizes, EnvPerWorldSize, ::testing::Values(1, 2, 3, 4));

TEST(LaunchLocal, NumGpusIsAnAliasOfNumProcsAndEnvReachesEveryRank) {
  RunOutput r = run_launch({"--num_gpus=2", "--env", "EXTRA=a b", probe_bin(), "--print-env"});
  ASSERT_EQ(r.exit_code(), 0) << diag(r);
  auto envs = env_lines(r.out);
  ASSERT_EQ(envs.size(), 2u);
  EXPECT_EQ(envs[1]["EXTRA"], "a");  // "a b" split by the line parser: the first word is enough
  EXPECT_NE(r.out.find("EXTRA=a b"), std::string::npos);
}

TEST(LaunchLocal, RanksRendezvousOverLoopback) {
  RunOutput r = run_launch({"--num_procs", "3", probe_bin(), "--rendezvous"});
  ASSERT_EQ(r.exit_code(), 0) << diag(r);
  for (int i = 0; i < 3; ++i)
    EXPECT_NE(r.out.find("[rank" + std::to_string(i) + "]: RANK=" + std::to_string(i) + " CONNECTED=1"),
              std::string::npos)
        << diag(r);
}

TEST(LaunchLocal, OutputIsPrefixedLineByLineWithStdoutAndStderrKeptApart) {
  RunOutput r = run_launch({"--num_procs", "2", probe_bin(), "--partial-output"});
  ASSERT_EQ(r.exit_code(), 0) << diag(r);
  std::vector<std::string> out = lines_of(r.out), err = lines_of(r.err);
  for (std::string rank : {"[rank0]: ", "[rank1]: "}) {
    auto ab = std::find(out.begin(), out.end(), rank + "ab");
    auto c = std::find(out.begin(), out.end(), rank + "c");
    EXPECT_NE(ab, out.end()) << diag(r);
    EXPECT_NE(c, out.end()) << diag(r);
    EXPECT_LT(ab - out.begin(), c - out.begin());
    EXPECT_NE(std::find(err.begin(), err.end(), rank + "e1"), err.end()) << diag(r);
    EXPECT_NE(std::find(err.begin(), err.end(), rank + "e2"), err.end())
        << diag(r);  // unterminated last line
  }
  EXPECT_EQ(out.size(), 4u) << diag(r);
  EXPECT_EQ(err.size(), 4u) << diag(r);
}

TEST(LaunchLocal, NoPrefixPassesOutputThroughUnchanged) {
  RunOutput r = run_launch({"--no_prefix", probe_bin(), "--partial-output"});
  ASSERT_EQ(r.exit_code(), 0) << diag(r);
  EXPECT_EQ(r.out, "ab\nc\n");
  EXPECT_EQ(r.err, "e1\ne2");
}

TEST(LaunchLocal, FailingRankExitCodeIsPropagatedAndTheOthersStopped) {
  TempDir dir;
  RunOutput r = run_launch({"--num_procs", "3", probe_bin(), "--on-term-write", dir.path(), "--pid-dir", dir.path(),
                            "--wait-pids", dir.path(), "3", "--exit", "1:3", "--sleep", kForever});
  EXPECT_EQ(r.exit_code(), 3) << diag(r);
  for (int i : {0, 2}) EXPECT_EQ(read_file(dir.file("term." + std::to_string(i))), "term") << "rank " << i << " was not stopped";
  auto pids = wait_for_pids(dir, 3, 1.0);
  ASSERT_EQ(pids.size(), 3u);
  auto errors = error_lines(r.err);
  ASSERT_EQ(errors.size(), 1u) << diag(r);
  EXPECT_EQ(errors[0], "ds-launch: error: rank 1 (pid " + std::to_string(pids[1]) +
                           ") exited with status 3; stopped the other 2 ranks");
  expect_all_gone(pids);
}

TEST(LaunchLocal, RankKilledWithSigkillStopsTheRest) {
  TempDir dir;
  Spawned launcher(launch_argv({"--num_procs", "4", probe_bin(), "--on-term-write", dir.path(), "--pid-dir",
                                dir.path(), "--sleep", kForever}));
  auto pids = wait_for_pids(dir, 4, 10.0);
  ASSERT_EQ(pids.size(), 4u);
  ASSERT_EQ(::kill(pids[2], SIGKILL), 0);
  RunOutput r = launcher.wait(15.0);
  EXPECT_EQ(r.exit_code(), 128 + SIGKILL) << diag(r);
  for (int i : {0, 1, 3}) EXPECT_EQ(read_file(dir.file("term." + std::to_string(i))), "term") << "rank " << i << " was not stopped";
  auto errors = error_lines(r.err);
  ASSERT_EQ(errors.size(), 1u) << diag(r);
  EXPECT_EQ(errors[0], "ds-launch: error: rank 2 (pid " + std::to_string(pids[2]) +
                           ") was killed by signal 9 (SIGKILL); stopped the other 3 ranks");
  expect_all_gone(pids);
}

TEST(LaunchLocal, RanksIgnoringSigtermAreKilledAfterTheTimeout) {
  TempDir dir;
  RunOutput r =
      run_launch({"--kill_timeout", "1", "--num_procs", "3", probe_bin(), "--ignore-term", "--pid-dir",
                  dir.path(), "--wait-pids", dir.path(), "3", "--exit", "0:4", "--sleep", kForever});
  EXPECT_EQ(r.exit_code(), 4) << diag(r);
  EXPECT_GE(r.seconds, 0.9);  // the launcher waited --kill_timeout before SIGKILL
  auto pids = wait_for_pids(dir, 3, 1.0);
  ASSERT_EQ(pids.size(), 3u);
  expect_all_gone(pids);
}

TEST(LaunchLocal, LeftoverChildrenOfARankAreKilledWithIt) {
  TempDir dir;
  RunOutput r = run_launch({"sh", "-c", "sleep 600 & echo $! > " + dir.file("bg") + "; exit 0"});
  EXPECT_EQ(r.exit_code(), 0) << diag(r);  // within run_launch's wait: the launcher did not wait for it
  std::string bg = read_file(dir.file("bg"));
  ASSERT_FALSE(bg.empty());
  EXPECT_TRUE(wait_until([&] { return process_gone(static_cast<pid_t>(std::stol(bg))); }, 2.0));
}

class SignalToLauncher : public ::testing::TestWithParam<int> {};

TEST_P(SignalToLauncher, ReachesEveryRankAndExitsWith128PlusSignal) {
  const int sig = GetParam();
  TempDir dir;
  Spawned launcher(launch_argv({"--num_procs", "4", probe_bin(), "--on-term-write", dir.path(), "--pid-dir",
                                dir.path(), "--sleep", kForever}));
  auto pids = wait_for_pids(dir, 4, 10.0);
  ASSERT_EQ(pids.size(), 4u);
  ASSERT_EQ(::kill(launcher.pid(), sig), 0);
  RunOutput r = launcher.wait(15.0);
  EXPECT_EQ(r.exit_code(), 128 + sig) << diag(r);
  for (int i = 0; i < 4; ++i)
    EXPECT_EQ(read_file(dir.file("term." + std::to_string(i))), "term") << "rank " << i;
  auto errors = error_lines(r.err);
  ASSERT_EQ(errors.size(), 1u) << diag(r);
  EXPECT_EQ(errors[0], std::string("ds-launch: error: received ") + (sig == SIGINT ? "SIGINT" : "SIGTERM") +
                           "; stopped 4 ranks");
  expect_all_gone(pids);
}
INSTANTIATE_TEST_SUITE_P(Signals, SignalToLauncher, ::testing::Values(SIGTERM, SIGINT),
                         [](const auto& info) { return info.param == SIGINT ? "SIGINT" : "SIGTERM"; });

TEST(LaunchLocal, KillingTheLauncherWithSigkillTakesTheRanksDown) {
  TempDir dir;
  Spawned launcher(launch_argv({"--num_procs", "3", probe_bin(), "--pid-dir", dir.path(), "--sleep", kForever}));
  auto pids = wait_for_pids(dir, 3, 10.0);
  ASSERT_EQ(pids.size(), 3u);
  ASSERT_EQ(::kill(launcher.pid(), SIGKILL), 0);
  launcher.wait(5.0);
  expect_all_gone(pids);
}

TEST(LaunchLocal, SecondSigintKillsRanksThatIgnoreTheFirst) {
  TempDir dir;
  // kill_timeout and the ranks' sleep are far beyond the waits below: only the second SIGINT
  // can have ended them.
  Spawned launcher(launch_argv({"--kill_timeout", "600", "--num_procs", "2", probe_bin(), "--ignore-term",
                                "--pid-dir", dir.path(), "--sleep", kForever}));
  auto pids = wait_for_pids(dir, 2, 10.0);
  ASSERT_EQ(pids.size(), 2u);
  // Repeated, because two signals sent before the launcher reads the first one count as one.
  EXPECT_TRUE(wait_until([&] { return ::kill(launcher.pid(), SIGINT) == 0 && process_gone(pids[0]); }, 15.0));
  RunOutput r = launcher.wait(15.0);
  EXPECT_EQ(r.exit_code(), 128 + SIGINT) << diag(r);
  expect_all_gone(pids);
}

TEST(LaunchLocal, DryRunPrintsEveryRankWithoutStartingIt) {
  RunOutput r = run_launch(
      {"--num_procs", "2", "--master_port", "4321", "--dry_run", "/nonexistent-is-fine-only-if-found", "x"});
  EXPECT_NE(r.exit_code(), 0);  // the program is still checked
  r = run_launch({"--num_procs", "2", "--master_port", "4321", "--dry_run", "sh", "-c", "echo a b"});
  ASSERT_EQ(r.exit_code(), 0) << diag(r);
  auto lines = lines_of(r.out);
  ASSERT_EQ(lines.size(), 2u) << diag(r);
  EXPECT_NE(lines[1].find("MASTER_PORT=4321 RANK=1 WORLD_SIZE=2 LOCAL_RANK=1"), std::string::npos)
      << lines[1];
  EXPECT_TRUE(ends_with(lines[1], " sh -c 'echo a b'")) << lines[1];
}

TEST(LaunchErrors, MissingOrNonExecutableProgramFailsBeforeStartingAnything) {
  TempDir dir;
  std::string noexec = dir.write("noexec.sh", "#!/bin/sh\necho hi\n");
  struct Case {
    std::string program, expect;
  } cases[] = {{"/nonexistent/prog", "does not exist"},
               {"no-such-program-xyz", "'no-such-program-xyz' not found in PATH"},
               {noexec, "is not executable"},
               {dir.path(), "is a directory"}};
  for (const auto& c : cases) {
    RunOutput r = run_launch({"--num_procs", "2", c.program, "arg"});
    EXPECT_NE(r.exit_code(), 0) << c.program;
    EXPECT_EQ(r.out, "") << c.program;
    EXPECT_EQ(lines_of(r.err).size(), 1u) << diag(r);
    EXPECT_NE(r.err.find("ds-launch: error: "), std::string::npos) << diag(r);
    EXPECT_NE(r.err.find(c.expect), std::string::npos) << diag(r);
  }
}

TEST(LaunchErrors, BadInputGivesOneLineAndNonZeroExit) {
  TempDir dir;
  std::string bad_hostfile = dir.write("hf", "a slots=2\n# comment\nb slots=two\n");
  std::string dup_hostfile = dir.write("dup", "a slots=2\na slots=1\n");
  std::string good_hostfile = dir.write("good", "a slots=2\nb slots=2\n");
  struct Case {
    std::vector<std::string> args;
    std::string expect;
  } cases[] = {
      {{"--num_procs", "0", "true"}, "--num_procs: expected an integer from 1 to 65536, got \"0\""},
      {{"--num_procs", "-1", "true"}, "--num_procs: expected an integer from 1 to 65536, got \"-1\""},
      {{"--hostfile", dir.path(), "true"}, "is a directory; give a file of lines 'HOST slots=N'"},
      {{"--master_port", "0", "true"}, "--master_port must be in 1..65535"},
      {{"--env", "=x", "true"}, "expected KEY=VALUE"},
      {{"--hostfile", bad_hostfile, "true"}, bad_hostfile + ":3: bad slot count 'two'"},
      {{"--hostfile", dup_hostfile, "true"}, dup_hostfile + ":2: host 'a' is listed twice"},
      {{"--hostfile", dir.file("missing"), "true"}, "cannot read hostfile"},
      {{"--hostfile", good_hostfile, "--include", "c", "true"}, "host 'c' is not in the hostfile"},
      {{"--hostfile", good_hostfile, "--include", "a:5", "true"}, "host 'a' has no slot 5"},
      {{"--hostfile", good_hostfile, "--include", "a", "--exclude", "b", "true"}, "mutually exclusive"},
      {{"--num_prcs", "2", "true"}, "did you mean '--num_procs'"},
      {{"--num_procs", "2"}, "no program to launch"},
      {{"--launcher", "slurm", "--hostfile", good_hostfile, "true"}, "--launcher slurm takes its nodes from Slurm"},
      {{"--launcher", "slurm", "--include", "a:0", "true"}, "under --launcher slurm name whole nodes"},
      {{"--launcher", "pbs", "true"}, "--launcher"},
  };
  for (const auto& c : cases) {
    RunOutput r = run_launch(c.args);
    EXPECT_NE(r.exit_code(), 0) << c.expect;
    auto lines = lines_of(r.err);
    ASSERT_EQ(lines.size(), 1u) << diag(r);
    EXPECT_EQ(lines[0].rfind("ds-launch: error: ", 0), 0u) << lines[0];
    EXPECT_NE(lines[0].find(c.expect), std::string::npos) << lines[0];
  }
}

TEST(LaunchErrors, MasterPortInUseIsReportedBeforeStarting) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa), 0);
  ASSERT_EQ(::listen(fd, 1), 0);
  socklen_t len = sizeof sa;
  ASSERT_EQ(::getsockname(fd, reinterpret_cast<sockaddr*>(&sa), &len), 0);
  std::string port = std::to_string(ntohs(sa.sin_port));
  RunOutput r = run_launch({"--num_procs", "2", "--master_port", port, probe_bin(), "--print-env"});
  ::close(fd);
  EXPECT_NE(r.exit_code(), 0);
  EXPECT_EQ(r.out, "");
  auto errors = error_lines(r.err);
  ASSERT_EQ(errors.size(), 1u) << diag(r);
  EXPECT_NE(errors[0].find("--master_port " + port + " is already in use on 127.0.0.1"), std::string::npos)
      << errors[0];
}

TEST(LaunchHostfile, SingleHostRunsLocallyOnTheIncludedSlots) {
  TempDir dir;
  std::string hf = dir.write("hf", "localhost slots=4\n");
  RunOutput r = run_launch({"--hostfile", hf, "--include", "localhost:1,3", probe_bin(), "--print-env"});
  ASSERT_EQ(r.exit_code(), 0) << diag(r);
  auto envs = env_lines(r.out);
  ASSERT_EQ(envs.size(), 2u) << diag(r);
  EXPECT_EQ(envs[0]["DS_SLOT"], "1");
  EXPECT_EQ(envs[1]["DS_SLOT"], "3");
  EXPECT_EQ(envs[1]["WORLD_SIZE"], "2");
}
