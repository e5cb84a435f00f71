// A real Slurm: the test starts munged, slurmctld and slurmd for a one-node cluster of this
// machine from a generated slurm.conf in a temporary directory (setup installs slurm-wlm and
// munge; nothing is installed here), runs ds-train through `ds-launch --launcher slurm` and
// through an sbatch script, checks both train like the plain `ds-launch` run, and stops the
// daemons. Where a daemon cannot start (not root, packages missing) the test says why and skips.
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <random>

#include "../launch/launch_test_util.h"
#include "ds/common/error.h"

using namespace ds_test;

namespace {

std::string bin(const std::string& name) {
  const char* dir = std::getenv("DS_BIN_DIR");
  return std::string(dir ? dir : DS_APPS_DIR) + "/" + name;
}

int free_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  ::close(fd);
  return ntohs(a.sin_port);
}

std::string read_text(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// A one-node Slurm cluster of this machine, stopped when destroyed.
class SlurmCluster {
 public:
  SlurmCluster() : dir_("ds_slurm") {}
  ~SlurmCluster() { stop(); }

  // "" when the cluster is up (the node idle), else why not.
  std::string start() {
    if (::geteuid() != 0) return "slurmd must run as root and this test is not";
    for (const char* p : {"/usr/sbin/munged", "/usr/sbin/slurmctld", "/usr/sbin/slurmd", "/usr/bin/srun", "/usr/bin/sbatch"})
      if (!std::filesystem::exists(p)) return ds::str(p, " is missing (scripts/setup installs slurm-wlm and munge)");
    char host[256] = {};
    ::gethostname(host, sizeof host - 1);
    const std::string node = std::string(host).substr(0, std::string(host).find('.'));
    std::ofstream key(dir_ / "munge.key", std::ios::binary);
    std::mt19937_64 rng(std::random_device{}());
    for (int i = 0; i < 128; ++i) {
      const uint64_t v = rng();
      key.write(reinterpret_cast<const char*>(&v), sizeof v);
    }
    key.close();
    ::chmod((dir_ / "munge.key").c_str(), 0600);
    std::filesystem::create_directories(dir_ / "state");
    std::filesystem::create_directories(dir_ / "spool");
    const std::string d = dir_.path();
    std::ofstream conf(dir_ / "slurm.conf");
    conf << "ClusterName=dstest\nSlurmctldHost=" << node << "(127.0.0.1)\nSlurmctldPort=" << free_port()
         << "\nSlurmdPort=" << free_port() << "\nAuthType=auth/munge\nAuthInfo=socket=" << d
         << "/munge.sock\nCredType=cred/munge\nSlurmUser=root\nSlurmdUser=root\nStateSaveLocation=" << d
         << "/state\nSlurmdSpoolDir=" << d << "/spool\nSlurmctldPidFile=" << d << "/slurmctld.pid\nSlurmdPidFile=" << d
         << "/slurmd.pid\nSlurmctldLogFile=" << d << "/slurmctld.log\nSlurmdLogFile=" << d
         << "/slurmd.log\nProctrackType=proctrack/linuxproc\nTaskPlugin=task/none\nSchedulerType=sched/builtin\n"
            "SelectType=select/cons_tres\nSelectTypeParameters=CR_CPU\nReturnToService=2\nMpiDefault=none\n"
            "JobAcctGatherType=jobacct_gather/none\nAccountingStorageType=accounting_storage/none\nNodeName="
         << node << " NodeAddr=127.0.0.1 CPUs=" << ::sysconf(_SC_NPROCESSORS_ONLN)
         << " RealMemory=1000 State=UNKNOWN\nPartitionName=debug Nodes=" << node
         << " Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES\n";
    conf.close();
    conf_ = dir_ / "slurm.conf";
    started_ = true;
    const std::string munged = ds::str("/usr/sbin/munged --key-file=", d, "/munge.key --socket=", d, "/munge.sock --pid-file=", d,
                                       "/munged.pid --log-file=", d, "/munged.log --seed-file=", d, "/munged.seed -f");
    if (std::system(munged.c_str()) != 0) return "munged did not start: " + read_text(dir_ / "munged.log");
    if (std::system(("/usr/sbin/slurmctld -i -f " + conf_).c_str()) != 0)
      return "slurmctld did not start: " + read_text(dir_ / "slurmctld.log");
    if (std::system(("/usr/sbin/slurmd -f " + conf_).c_str()) != 0) return "slurmd did not start: " + read_text(dir_ / "slurmd.log");
    for (int i = 0; i < 100; ++i) {
      RunOutput r = Spawned(with_conf({"/usr/bin/sinfo", "-h", "-o", "%T"})).wait(10);
      if (r.out.find("idle") != std::string::npos) return "";
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
    return "the node did not become idle in 20 s: " + read_text(dir_ / "slurmd.log");
  }

  // argv run with this cluster's slurm.conf.
  std::vector<std::string> with_conf(std::vector<std::string> argv) const {
    argv.insert(argv.begin(), {"/usr/bin/env", "SLURM_CONF=" + conf_});
    return argv;
  }
  const TempDir& dir() const { return dir_; }

 private:
  void stop() {
    if (!started_) return;
    std::vector<pid_t> pids;
    for (const char* f : {"slurmd.pid", "slurmctld.pid", "munged.pid"}) {
      const pid_t pid = std::atoi(read_text(dir_ / f).c_str());
      if (pid > 0 && ::kill(pid, SIGTERM) == 0) pids.push_back(pid);
    }
    for (pid_t pid : pids) {  // daemons are not our children: wait until they are gone
      for (int i = 0; i < 100 && ::kill(pid, 0) == 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(100));
      if (::kill(pid, 0) == 0) ::kill(pid, SIGKILL);
    }
  }

  TempDir dir_;
  std::string conf_;
  bool started_ = false;
};

// ds-train's done line without its speed and memory (which differ run to run).
std::string done_line(const RunOutput& r) {
  for (const auto& l : lines_of(r.out)) {
    const size_t at = l.find("ds-train: done:");
    if (at != std::string::npos) return l.substr(at, l.rfind(", ", l.find(" tokens/s")) - at);
  }
  return "<no done line>";
}

const std::vector<std::string> kTrain = {"--n-layer", "1", "--n-head", "2", "--d-model", "32", "--steps", "6",
                                         "--eval-examples", "16", "--eval-interval", "0", "--plot", ""};

std::vector<std::string> train(std::vector<std::string> before) {
  before.push_back(bin("ds-train"));
  before.insert(before.end(), kTrain.begin(), kTrain.end());
  return before;
}

}  // namespace

TEST(Slurm, DsLaunchThroughSrunAndSbatchTrainsLikeTheLocalLauncher) {
  SlurmCluster cluster;
  const std::string why = cluster.start();
  if (!why.empty()) GTEST_SKIP() << "no Slurm cluster: " << why.substr(0, why.find('\n'));
  RunOutput local = Spawned(train({bin("ds-launch"), "--num_procs", "2"})).wait(120);
  ASSERT_EQ(local.exit_code(), 0) << diag(local);
  ASSERT_NE(done_line(local).find("final loss"), std::string::npos) << diag(local);

  RunOutput srun = Spawned(cluster.with_conf(train({bin("ds-launch"), "--launcher", "slurm", "--num_procs", "2"}))).wait(120);
  ASSERT_EQ(srun.exit_code(), 0) << diag(srun);
  EXPECT_NE(srun.out.find("[ds] rank 0 of 2 (local 0) from Slurm, master "), std::string::npos) << diag(srun);
  EXPECT_EQ(done_line(srun), done_line(local));

  // The sbatch script of docs/LAUNCH.md: ds-launch --launcher slurm inside the allocation.
  const std::string out = cluster.dir() / "job.out";
  std::string script = "#!/bin/bash\n#SBATCH --nodes=1\n#SBATCH --ntasks-per-node=2\nset -e\n";
  for (const auto& w : train({bin("ds-launch"), "--launcher", "slurm", "--num_procs", "2"})) script += "'" + w + "' ";
  const std::string path = cluster.dir().write("job.sh", script + "\n");
  RunOutput batch = Spawned(cluster.with_conf({"/usr/bin/sbatch", "--wait", "-o", out, path})).wait(180);
  ASSERT_EQ(batch.exit_code(), 0) << diag(batch) << read_text(out);
  RunOutput job{0, false, read_text(out), "", 0};
  EXPECT_EQ(done_line(job), done_line(local)) << job.out;

  // More ranks per node than the allocation gives: one line before srun runs.
  std::string bad = "#!/bin/bash\n#SBATCH --nodes=1\n#SBATCH --ntasks-per-node=1\n";
  for (const auto& w : train({bin("ds-launch"), "--launcher", "slurm", "--num_procs", "2"})) bad += "'" + w + "' ";
  const std::string bad_out = cluster.dir() / "bad.out";
  RunOutput refused =
      Spawned(cluster.with_conf({"/usr/bin/sbatch", "--wait", "-o", bad_out, cluster.dir().write("bad.sh", bad + "\n")})).wait(120);
  EXPECT_NE(refused.exit_code(), 0) << diag(refused);
  EXPECT_NE(read_text(bad_out).find("ds-launch: error: --num_procs 2 ranks per node but Slurm job"), std::string::npos)
      << read_text(bad_out);
}
