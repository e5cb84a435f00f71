// Two "hosts" as network namespaces joined by a veth pair: ds-launch starts 2 nodes x 2 ranks
// through `ip netns exec {host}` as its remote shell. Traffic stays inside the namespaces this
// test creates; they are always deleted (RAII guard), also when a check fails. Needs root and
// `ip`; skips otherwise.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <thread>

#include "launch_test_util.h"

using namespace ds_test;

namespace {

std::string find_ip() {
  for (const char* p : {"/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"})
    if (::access(p, X_OK) == 0) return p;
  return "";
}

// Runs a command (10 s at most); returns "" on success, else what went wrong.
std::string run_cmd(const std::vector<std::string>& argv) {
  Spawned p(argv);
  RunOutput r = p.wait(10.0);
  if (r.exit_code() == 0 && !r.timed_out) return "";
  std::string cmd;
  for (const auto& a : argv) cmd += (cmd.empty() ? "" : " ") + a;
  return cmd + ": " + diag(r);
}

// Two namespaces A and B with a veth pair A:ip_a <-> B:ip_b (a /24 of 10.2xx.x.x chosen from
// the pid). Whatever was created is deleted by the destructor.
class TwoHostNetwork {
 public:
  TwoHostNetwork() : ip_(find_ip()) {
    std::string id = std::to_string(::getpid());
    ns_a = "dsl" + id + "a", ns_b = "dsl" + id + "b";
    veth_a = "dsl" + id + "va", veth_b = "dsl" + id + "vb";
    std::string net =
        "10." + std::to_string(200 + ::getpid() % 50) + "." + std::to_string(::getpid() / 50 % 256) + ".";
    ip_a = net + "1", ip_b = net + "2";
  }
  ~TwoHostNetwork() {
    for (auto it = cleanup_.rbegin(); it != cleanup_.rend(); ++it) run_cmd(*it);  // errors: already gone
  }
  TwoHostNetwork(const TwoHostNetwork&) = delete;
  TwoHostNetwork& operator=(const TwoHostNetwork&) = delete;

  // "" when the network is up, else why it could not be made.
  std::string create() {
    if (::geteuid() != 0) return "network namespaces need root";
    if (ip_.empty()) return "the 'ip' tool (iproute2) is not installed";
    for (const std::string& ns : {ns_a, ns_b}) {
      if (std::string e = run_cmd({ip_, "netns", "add", ns}); !e.empty()) return e;
      cleanup_.push_back({ip_, "netns", "del", ns});
    }
    cleanup_.push_back({ip_, "link", "del", veth_a});  // only matters if it stayed in this namespace
    std::vector<std::vector<std::string>> steps = {
        {ip_, "link", "add", veth_a, "netns", ns_a, "type", "veth", "peer", "name", veth_b, "netns", ns_b},
        {ip_, "-n", ns_a, "addr", "add", ip_a + "/24", "dev", veth_a},
        {ip_, "-n", ns_b, "addr", "add", ip_b + "/24", "dev", veth_b},
        {ip_, "-n", ns_a, "link", "set", veth_a, "up"},
        {ip_, "-n", ns_b, "link", "set", veth_b, "up"},
        {ip_, "-n", ns_a, "link", "set", "lo", "up"},
        {ip_, "-n", ns_b, "link", "set", "lo", "up"},
    };
    for (const auto& s : steps)
      if (std::string e = run_cmd(s); !e.empty()) return e;
    return "";
  }

  // "net:[inode]" as /proc/<pid>/ns/net shows it for processes inside `ns`.
  static std::string netns_id(const std::string& ns) {
    struct stat st;
    if (::stat(("/run/netns/" + ns).c_str(), &st) != 0) return "<no /run/netns/" + ns + ">";
    return "net:[" + std::to_string(st.st_ino) + "]";
  }

  std::string ns_a, ns_b, veth_a, veth_b, ip_a, ip_b;

 private:
  std::string ip_;
  std::vector<std::vector<std::string>> cleanup_;
};

class TwoHosts : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string why = net_.create();
    if (!why.empty()) GTEST_SKIP() << "cannot create network namespaces: " << why;
    hostfile_ = dir_.write("hostfile", net_.ns_a + " slots=2\n" + net_.ns_b + " slots=2\n");
  }
  std::vector<std::string> args(std::vector<std::string> program) {
    std::vector<std::string> a = {"--hostfile",    hostfile_, "--launcher_cmd", "ip netns exec {host}",
                                  "--master_addr", net_.ip_a, "--kill_timeout", "2",
                                  probe_bin()};
    a.insert(a.end(), program.begin(), program.end());
    return a;
  }

  // Bytes both ends have sent over the veth link so far.
  int64_t link_bytes() {
    int64_t sum = 0;
    for (const auto& [ns, dev] : {std::make_pair(net_.ns_a, net_.veth_a), std::make_pair(net_.ns_b, net_.veth_b)}) {
      Spawned p({"/usr/sbin/ip", "netns", "exec", ns, "cat", "/sys/class/net/" + dev + "/statistics/tx_bytes"});
      RunOutput r = p.wait(10.0);
      EXPECT_EQ(r.exit_code(), 0) << diag(r);
      sum += std::stoll(r.out.empty() ? "0" : r.out);
    }
    return sum;
  }

  // ds-train with `extra` config keys on both hosts (2 nodes x 2 ranks) against 1 process:
  // the same losses (1e-5) for 6 steps of AdamW with clipping; the two-host run's output
  // must contain `expect`. Returns the bytes the two-host run sent over the link.
  int64_t expect_trains_as_one_process(const std::string& extra, const std::vector<std::string>& model,
                                    const std::string& expect) {
    const std::string train = std::string(DS_APPS_DIR) + "/ds-train";
    auto config = [&](const std::string& name, const std::string& keys) {
      return dir_.write(name, R"({"train_batch_size": 8, "optimizer": {"type": "AdamW", "params": {"lr": 0.003}},
        "gradient_clipping": 1.0)" + keys + "}");
    };
    auto run = [&](std::vector<std::string> args, const std::string& csv, int timeout) {
      args.insert(args.end(), {"--metrics", dir_.file(csv), "--steps", "6", "--eval-interval", "0", "--eval-examples", "8",
                               "--plot", ""});
      args.insert(args.end(), model.begin(), model.end());
      RunOutput r = run_launch(args, timeout);
      EXPECT_EQ(r.exit_code(), 0) << diag(r);
      std::vector<double> out;
      auto lines = lines_of(read_file(dir_.file(csv)));
      for (size_t i = 1; i < lines.size(); ++i) out.push_back(std::stod(lines[i].substr(lines[i].find(',') + 1)));
      return std::make_pair(out, r.out);
    };
    const int64_t before = link_bytes();
    const auto [got, out] = run({"--hostfile", hostfile_, "--launcher_cmd", "ip netns exec {host}", "--master_addr",
                                 net_.ip_a, "--kill_timeout", "2", train, "--config", config("split.json", extra)},
                                "split.csv", 110);
    const int64_t sent = link_bytes() - before;
    EXPECT_NE(out.find(expect), std::string::npos) << out;
    const auto want = run({"--num_procs", "1", train, "--config", config("one.json", "")}, "one.csv", 60).first;
    EXPECT_EQ(got.size(), 6u);
    EXPECT_EQ(want.size(), 6u);
    for (size_t i = 0; i < std::min(got.size(), want.size()); ++i) EXPECT_NEAR(got[i], want[i], 1e-5) << "step " << i + 1;
    return sent;
  }

  TwoHostNetwork net_;  // destroyed last: after every process of the test is gone
  TempDir dir_;
  std::string hostfile_;
};

}  // namespace

TEST_F(TwoHosts, TwoNodesOfTwoRanksRendezvousAcrossTheVethLink) {
  RunOutput r = run_launch(args({"--print-env", "--rendezvous"}), 25);
  ASSERT_EQ(r.exit_code(), 0) << diag(r);
  auto envs = env_lines(r.out);
  ASSERT_EQ(envs.size(), 4u) << diag(r);
  for (int i = 0; i < 4; ++i) {
    auto& e = envs[static_cast<size_t>(i)];
    EXPECT_EQ(e["RANK"], std::to_string(i));
    EXPECT_EQ(e["WORLD_SIZE"], "4");
    EXPECT_EQ(e["LOCAL_RANK"], std::to_string(i % 2));
    EXPECT_EQ(e["NODE_RANK"], std::to_string(i / 2));
    EXPECT_EQ(e["MASTER_ADDR"], net_.ip_a);
    EXPECT_EQ(e["MASTER_PORT"], "29500");  // the master is not an address of the driver's host
    EXPECT_EQ(e["NETNS"], TwoHostNetwork::netns_id(i < 2 ? net_.ns_a : net_.ns_b)) << "rank " << i;
    EXPECT_NE(r.out.find("[rank" + std::to_string(i) + "]: RANK=" + std::to_string(i) + " CONNECTED=1"),
              std::string::npos)
        << diag(r);
  }
}

TEST_F(TwoHosts, FailureOnTheSecondHostStopsBothNodes) {
  RunOutput r = run_launch(
      args({"--pid-dir", dir_.path(), "--wait-pids", dir_.path(), "4", "--exit", "2:5", "--sleep", "600"}),
      25);
  EXPECT_EQ(r.exit_code(), 5) << diag(r);
  auto pids = wait_for_pids(dir_, 4, 1.0);
  ASSERT_EQ(pids.size(), 4u);
  auto errors = error_lines(r.err);
  ASSERT_EQ(errors.size(), 1u) << diag(r);
  EXPECT_EQ(errors[0], "ds-launch: error: rank 2 (pid " + std::to_string(pids[2]) + ") on " + net_.ns_b +
                           " exited with status 5; stopped the other 3 ranks");
  expect_all_gone(pids);
}

TEST_F(TwoHosts, ALinkThatGoesDownMidTrainingEndsTheJobNamingTheRank) {
  // ds-train on two hosts (one rank each); once it trains, host B's link goes down. Both ranks
  // time out in their collective (DS_COMM_TIMEOUT 5 s): rank 0 finds that rank 1 did not
  // answer, rank 1 that it cannot reach rank 0's store either (cut off). Whichever reports
  // first, the job ends naming host B's rank, within the timeout plus the time to find out who
  // (documented in LAUNCH.md).
  const char* dir = std::getenv("DS_BIN_DIR");
  const std::string train = std::string(dir ? dir : DS_APPS_DIR) + "/ds-train";
  const std::string hosts = dir_.write("hosts1", net_.ns_a + " slots=1\n" + net_.ns_b + " slots=1\n");
  Spawned launcher(launch_argv({"--hostfile", hosts, "--launcher_cmd", "ip netns exec {host}", "--master_addr",
                                net_.ip_a, "--kill_timeout", "2", "--env", "DS_COMM_TIMEOUT=5", train, "--steps",
                                "1000000", "--n-layer", "1", "--n-head", "2", "--d-model", "32", "--eval-interval",
                                "0", "--plot", "", "--metrics", dir_.file("m.csv")}));
  const auto deadline = Clock::now() + std::chrono::seconds(60);
  while (read_file(dir_.file("m.csv")).find("\n3,") == std::string::npos && Clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  ASSERT_NE(read_file(dir_.file("m.csv")).find("\n3,"), std::string::npos) << "never trained 3 steps";
  ASSERT_EQ(run_cmd({"/usr/sbin/ip", "-n", net_.ns_b, "link", "set", net_.veth_b, "down"}), "");
  const auto down = Clock::now();
  RunOutput r = launcher.wait(90);
  const double seconds = std::chrono::duration<double>(Clock::now() - down).count();
  EXPECT_FALSE(r.timed_out) << diag(r);
  EXPECT_NE(r.exit_code(), 0) << diag(r);
  const bool rank0_says = r.err.find("rank 1 did not answer (stopped, hung, or its host unreachable)") != std::string::npos;
  const bool rank1_says = r.err.find("rank 0 is stopped or gone, or this host is cut off from it") != std::string::npos &&
                          r.err.find("ds-launch: error: rank 1 (pid") != std::string::npos &&
                          r.err.find(") on " + net_.ns_b + " exited with status 1") != std::string::npos;
  EXPECT_TRUE(rank0_says || rank1_says) << diag(r);
  EXPECT_LT(seconds, 5 + 20 + 15) << "timeout + diagnosis + the launcher stopping the other node";
}

// A pipeline across hosts: ds-train with 2 stages x 2 data-parallel ranks puts stage 0 on the
// first host and stage 1 on the second (the pipe axis is the slowest of the rank grid), so
// every activation and its gradient crosses the veth link; the losses must be a 1-process
// run's (1e-5).
TEST_F(TwoHosts, APipelineAcrossTwoHostsTrainsAsOneProcess) {
  expect_trains_as_one_process(R"(, "train_micro_batch_size_per_gpu": 2, "pipeline": {"stages": 2},
                                  "zero_optimization": {"stage": 1})",
                               {"--n-layer", "2", "--n-head", "2", "--d-model", "32"}, "layout pipe=2 x data=2 x tensor=1");
}

// Ulysses across hosts: sequence_parallel_size 4 over 2 nodes x 2 ranks makes one sequence
// group of all four, so every block's all-to-alls (q, k, v and the output, forward and
// backward) and the loss's count cross the veth link; the losses must be a 1-process run's
// (1e-5).
TEST_F(TwoHosts, ASequenceSplitAcrossTwoHostsTrainsAsOneProcess) {
  expect_trains_as_one_process(R"(, "sequence_parallel_size": 4, "zero_optimization": {"stage": 2})",
                               {"--n-layer", "2", "--n-head", "4", "--d-model", "32"},
                               "each of 4 ranks takes 4 of every 16 tokens");
}

// ZeRO++'s hpZ across hosts: stage 3 over 2 nodes x 2 ranks with zero_hpz_partition_size 2
// keeps a secondary copy of the weights on each host, so only a unit's first gather of a step
// crosses the veth link and the backward's stay on the host (stage3_max_reuse_distance 0
// releases a unit after its forward, as a model larger than the default distance is: the
// backward gathers again). The losses are a 1-process run's (1e-5: hpZ is exact), and the link
// carries clearly fewer bytes than plain stage 3 (per step a gradient reduce-scatter and one
// gather cross instead of a reduce-scatter and two gathers; both also send the initial weights).
TEST_F(TwoHosts, HpzKeepsTheBackwardsGathersOnTheHost) {
  const std::vector<std::string> model = {"--n-layer", "2", "--n-head", "2", "--d-model", "64"};
  const std::string stage3 =
      R"(, "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0, "stage3_max_reuse_distance": 0)";
  const int64_t plain = expect_trains_as_one_process(stage3 + "}", model, "ZeRO stage 3");
  const int64_t hpz = expect_trains_as_one_process(stage3 + R"(, "zero_hpz_partition_size": 2})", model,
                                                   "a secondary weight copy over 2 data-parallel ranks (hpZ)");
  std::printf("bytes over the link: %lld with hpZ, %lld without\n", (long long)hpz, (long long)plain);
  EXPECT_LT(double(hpz), 0.85 * double(plain)) << hpz << " bytes over the link with hpZ, " << plain << " without";
  // 3 ranks on the first host and 1 on the second: the pair of data-parallel ranks 2-3 spans
  // both hosts, and the start-up says so.
  const std::string uneven = dir_.write("uneven", net_.ns_a + " slots=3\n" + net_.ns_b + " slots=1\n");
  const std::string cfg = dir_.write("uneven.json", R"({"train_batch_size": 8, "optimizer": {"type": "AdamW"})" +
                                                        stage3 + R"(, "zero_hpz_partition_size": 2}})");
  std::vector<std::string> run = {"--hostfile", uneven, "--launcher_cmd", "ip netns exec {host}", "--master_addr",
                                  net_.ip_a, "--kill_timeout", "2", std::string(DS_APPS_DIR) + "/ds-train", "--config",
                                  cfg, "--steps", "1", "--eval-interval", "0", "--plot", ""};
  run.insert(run.end(), model.begin(), model.end());
  RunOutput r = run_launch(run, 60);
  EXPECT_EQ(r.exit_code(), 0) << diag(r);
  EXPECT_NE((r.out + r.err).find("1 of 2 secondary groups span hosts (data-parallel ranks 2-3)"), std::string::npos)
      << diag(r);
}
