// ds-launch with ranks that are in the middle of real collectives: kill -9 one of 4 and the
// job must end within 10 s, non-zero, naming the rank, with no process left behind.
#include <gtest/gtest.h>
#include <signal.h>

#include "../launch/launch_test_util.h"

using namespace ds_test;

TEST(LaunchWithCollectives, KillNineOfOneRankStopsTheJobNamingIt) {
  TempDir dir;
  Spawned launcher(launch_argv({"--num_procs", "4", COLLECTIVE_LOOP, dir.path()}));
  std::vector<pid_t> pids = wait_for_pids(dir, 4, 30);
  ASSERT_EQ(pids.size(), 4u) << "the ranks did not all start";
  std::this_thread::sleep_for(std::chrono::milliseconds(500));  // well into the all-reduce loop
  ASSERT_EQ(::kill(pids[2], SIGKILL), 0);
  RunOutput r = launcher.wait(20);
  EXPECT_FALSE(r.timed_out) << diag(r);
  EXPECT_LT(r.seconds, 0.5 + 10.0 + 5.0) << diag(r);  // startup + the 10 s promise + slack
  EXPECT_NE(r.exit_code(), 0) << diag(r);
  EXPECT_NE(r.err.find("rank 2"), std::string::npos) << diag(r);
  EXPECT_NE(r.err.find("SIGKILL"), std::string::npos) << diag(r);
  expect_all_gone(pids);
}
