// Pure parts of the launcher beyond parsing: command lines (remote shell, per-node, mpirun),
// environment files, the launch plan, and the small process/port helpers.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>

#include "ds/common/error.h"
#include "ds/launch/command.h"
#include "ds/launch/launcher.h"
#include "ds/launch/net.h"
#include "ds/launch/process.h"
#include "support/errors.h"

using namespace ds::launch;

namespace {


std::vector<HostEntry> two_hosts() { return parse_hostfile("a slots=2\nb slots=3\n", "hf"); }

LaunchOptions with_program() {
  LaunchOptions o;
  o.program = {"prog"};
  return o;
}

}  // namespace

TEST(Shell, QuotesOnlyWhatNeedsQuoting) {
  EXPECT_EQ(shell_quote("--node_rank=1"), "--node_rank=1");
  EXPECT_EQ(shell_quote("/a/b.c:d,e@f"), "/a/b.c:d,e@f");
  EXPECT_EQ(shell_quote(""), "''");
  EXPECT_EQ(shell_quote("a b"), "'a b'");
  EXPECT_EQ(shell_quote("it's"), "'it'\\''s'");
  EXPECT_EQ(shell_quote("$HOME;rm"), "'$HOME;rm'");
  EXPECT_EQ(shell_join({"echo", "a b", "c"}), "echo 'a b' c");
}

TEST(Shell, SplitWordsUndoesJoin) {
  std::vector<std::string> words = {"x", "a b", "it's", "", "$V", "back\\slash", "q\"d"};
  EXPECT_EQ(split_shell_words(shell_join(words)), words);
  EXPECT_EQ(split_shell_words("  ssh  -o 'BatchMode=yes' \"{host}\" "),
            (std::vector<std::string>{"ssh", "-o", "BatchMode=yes", "{host}"}));
  EXPECT_EQ(split_shell_words("a\\ b \"c\\\"d\""), (std::vector<std::string>{"a b", "c\"d"}));
  EXPECT_ERROR_HAS(split_shell_words("ssh 'x"), "unterminated single quote");
  EXPECT_ERROR_HAS(split_shell_words("ssh \"x"), "unterminated double quote");
}

TEST(RemoteTemplate, SshGetsTheCommandAsOneQuotedString) {
  auto argv =
      expand_remote_template(kDefaultRemoteTemplate, "w1", 1, {"/bin/ds-launch", "--x=1", "--", "a b"});
  EXPECT_EQ(argv,
            (std::vector<std::string>{"ssh", "-o", "BatchMode=yes", "w1", "/bin/ds-launch --x=1 -- 'a b'"}));
  // A plain ssh template without {cmd} behaves the same.
  auto plain = expand_remote_template("/usr/bin/ssh {host}", "w1", 1, {"prog", "a b"});
  EXPECT_EQ(plain, (std::vector<std::string>{"/usr/bin/ssh", "w1", "prog 'a b'"}));
}

TEST(RemoteTemplate, ExecStyleGetsSeparateArguments) {
  auto argv = expand_remote_template("ip netns exec {host}", "ns0", 0, {"prog", "a b"});
  EXPECT_EQ(argv, (std::vector<std::string>{"ip", "netns", "exec", "ns0", "prog", "a b"}));
  auto ranked = expand_remote_template("docker exec worker{node_rank}", "h", 3, {"prog"});
  EXPECT_EQ(ranked, (std::vector<std::string>{"docker", "exec", "worker3", "prog"}));
}

TEST(RemoteTemplate, RejectsUnknownPlaceholdersEmptyAndHostless) {
  EXPECT_ERROR_HAS(expand_remote_template("ssh {hots}", "h", 0, {"p"}), "did you mean {host}");
  EXPECT_ERROR_HAS(expand_remote_template("", "h", 0, {"p"}), "empty");
  EXPECT_ERROR_HAS(expand_remote_template("env X=1", "h", 0, {"p"}), "neither {host} nor {node_rank}");
}

TEST(NodeCommand, CarriesWorldMasterEnvAndProgram) {
  NodeCommandSpec spec;
  spec.launcher_path = "/opt/ds-launch";
  spec.world = decode_world("a:0,1@b:0");
  spec.node_rank = 1;
  spec.master = {"a", 29500};
  spec.workdir = "/work";
  spec.exports = {{"PATH", "/bin"}, {"V", "x y"}};
  spec.prefix_output = false;
  spec.kill_timeout_s = 2.5;
  spec.program = {"train", "--lr", "1"};
  EXPECT_EQ(node_command(spec),
            (std::vector<std::string>{"/opt/ds-launch", "--node_rank=1", "--world_info=a:0,1@b:0",
                                      "--master_addr=a", "--master_port=29500", "--kill_timeout=2.5",
                                      "--watch_stdin", "--workdir=/work", "--no_prefix", "--env=PATH=/bin",
                                      "--env=V=x y", "--", "train", "--lr", "1"}));
}

TEST(Mpirun, CommandHasProcessCountHostsAndExports) {
  MpirunSpec spec;
  spec.world = decode_world("a:0,1@b:0,1,2");
  spec.master = {"a", 1234};
  spec.pass_env = {"PATH"};
  spec.exports = {{"K", "v w"}};
  spec.extra_args = {"--bind-to", "none"};
  spec.allow_run_as_root = true;
  spec.program = {"./train", "x"};
  EXPECT_EQ(mpirun_command(spec),
            (std::vector<std::string>{"mpirun", "-np", "5", "--host", "a:2,b:3", "--allow-run-as-root",
                                      "--bind-to", "none", "-x", "MASTER_ADDR=a", "-x", "MASTER_PORT=1234",
                                      "-x", "PATH", "-x", "K=v w", "./train", "x"}));
}

TEST(EnvFile, ParsesAssignmentsCommentsExportAndQuotes) {
  auto env = parse_env_file("# c\n\nA=1\nexport B = two words \nC=\"q v\"\nA=3\nD=x=y\n", "f");
  EXPECT_EQ(env, (std::vector<EnvVar>{{"A", "3"}, {"B", "two words"}, {"C", "q v"}, {"D", "x=y"}}));
  EXPECT_ERROR_HAS(parse_env_file("A=1\nnot an assignment\n", "envf"), "envf:2");
  EXPECT_ERROR_HAS(parse_env_file("1A=1\n", "envf"), "envf:1");
  EXPECT_EQ(parse_env_assignment("K=a=b"), (EnvVar{"K", "a=b"}));
  EXPECT_EQ(parse_env_assignment("K="), (EnvVar{"K", ""}));
  EXPECT_ERROR_HAS(parse_env_assignment("=v"), "KEY=VALUE");
  EXPECT_ERROR_HAS(parse_env_assignment("novalue"), "KEY=VALUE");
}

TEST(EnvFile, ExportedEnvironmentPicksWhatRanksNeed) {
  auto env = select_exported_env({"PATH=/bin", "HOME=/root", "OMP_NUM_THREADS=2", "NCCL_DEBUG=INFO",
                                  "LD_LIBRARY_PATH=/l", "SECRET=x", "DS_LAUNCHER_CMD=ssh", "PYTHONPATH=/p"});
  EXPECT_EQ(env, (std::vector<EnvVar>{{"PATH", "/bin"},
                                      {"OMP_NUM_THREADS", "2"},
                                      {"NCCL_DEBUG", "INFO"},
                                      {"LD_LIBRARY_PATH", "/l"},
                                      {"PYTHONPATH", "/p"}}));
}

TEST(Environment, MergeReplacesAndAdds) {
  auto env = merge_environment({"A=1", "B=2", "C"}, {{"B", "3"}, {"D", "4"}, {"D", "5"}});
  EXPECT_EQ(env, (std::vector<std::string>{"A=1", "C", "B=3", "D=5"}));
}

TEST(Plan, LocalByDefaultWithOneRank) {
  LaunchPlan p = make_plan(with_program(), {});
  EXPECT_EQ(p.mode, LaunchMode::kLocal);
  EXPECT_EQ(world_size(p.world), 1);
  EXPECT_EQ(p.master_addr, "127.0.0.1");
  EXPECT_EQ(p.master_port, -1);
}

TEST(Plan, NumProcsGivesLocalRanks) {
  LaunchOptions o = with_program();
  o.num_procs = 4;
  o.master_port = 5000;
  LaunchPlan p = make_plan(o, {});
  EXPECT_EQ(world_size(p.world), 4);
  EXPECT_EQ(p.master_port, 5000);
}

TEST(Plan, HostfileWithSeveralHostsIsMultiNodeWithFirstHostAsMaster) {
  LaunchPlan p = make_plan(with_program(), two_hosts());
  EXPECT_EQ(p.mode, LaunchMode::kMultiNode);
  EXPECT_EQ(world_size(p.world), 5);
  EXPECT_EQ(p.master_addr, "a");
}

TEST(Plan, SingleHostRunsLocallyUnlessForced) {
  LaunchOptions o = with_program();
  o.include = "b:0,2";
  LaunchPlan p = make_plan(o, two_hosts());
  EXPECT_EQ(p.mode, LaunchMode::kLocal);
  EXPECT_EQ(p.world[0].slots, (std::vector<int>{0, 2}));
  EXPECT_EQ(p.master_addr, "127.0.0.1");
  o.force_multi = true;
  EXPECT_EQ(make_plan(o, two_hosts()).mode, LaunchMode::kMultiNode);
}

TEST(Plan, NodeModeNeedsAnAgreedPort) {
  LaunchOptions o = with_program();
  o.world_info = "a:0,1@b:0";
  o.node_rank = 1;
  EXPECT_ERROR_HAS(make_plan(o, {}), "--master_port is required");
  o.master_port = 29501;
  LaunchPlan p = make_plan(o, {});
  EXPECT_EQ(p.mode, LaunchMode::kNode);
  EXPECT_EQ(p.node_rank, 1);
  EXPECT_EQ(p.master_addr, "a");
  o.node_rank = 2;
  EXPECT_ERROR_HAS(make_plan(o, {}), "--node_rank 2");
}

TEST(Plan, ManualNodesWithoutHostfileNeedMasterAddr) {
  LaunchOptions o = with_program();
  o.num_nodes = 2;
  o.num_procs = 2;
  EXPECT_ERROR_HAS(make_plan(o, {}), "needs a --hostfile");
  o.node_rank = 1;
  o.master_port = 1234;
  EXPECT_ERROR_HAS(make_plan(o, {}), "--master_addr is required");
  o.master_addr = "10.0.0.1";
  LaunchPlan p = make_plan(o, {});
  EXPECT_EQ(p.mode, LaunchMode::kNode);
  EXPECT_EQ(world_size(p.world), 4);
}

TEST(Plan, MpirunTakesTheWholeWorld) {
  LaunchOptions o = with_program();
  o.launcher = LauncherKind::kMpirun;
  LaunchPlan p = make_plan(o, two_hosts());
  EXPECT_EQ(p.mode, LaunchMode::kMpirun);
  EXPECT_EQ(p.master_addr, "a");
  o.node_rank = 0;
  EXPECT_ERROR_HAS(make_plan(o, two_hosts()), "cannot be used with --launcher mpirun");
}

TEST(Plan, RejectsBadAndContradictoryOptions) {
  LaunchOptions o = with_program();
  auto plan_error = [&](auto change, const std::vector<HostEntry>& hf = {}) {
    LaunchOptions copy = o;
    change(copy);
    return ds::test::error_of([&] { make_plan(copy, hf); });
  };
  EXPECT_NE(plan_error([](LaunchOptions& c) { c.program.clear(); }).find("no program"), std::string::npos);
  EXPECT_NE(plan_error([](LaunchOptions& c) { c.num_procs = 0; }).find("--num_procs must be at least 1"),
            std::string::npos);
  EXPECT_NE(plan_error([](LaunchOptions& c) { c.num_nodes = 0; }).find("--num_nodes must be at least 1"),
            std::string::npos);
  EXPECT_NE(plan_error([](LaunchOptions& c) { c.master_port = 70000; }).find("1..65535"), std::string::npos);
  EXPECT_NE(plan_error([](LaunchOptions& c) { c.kill_timeout_s = -1; }).find("--kill_timeout"),
            std::string::npos);
  EXPECT_NE(plan_error([](LaunchOptions& c) { c.include = "a"; }).find("need a --hostfile"),
            std::string::npos);
  EXPECT_NE(plan_error([](LaunchOptions& c) { c.include = "a", c.exclude = "b"; }, two_hosts())
                .find("mutually exclusive"),
            std::string::npos);
  EXPECT_NE(plan_error([](LaunchOptions& c) { c.include = "a", c.num_procs = 1; }, two_hosts())
                .find("cannot be combined"),
            std::string::npos);
  EXPECT_NE(plan_error([](LaunchOptions& c) { c.world_info = "a:0"; }).find("needs --node_rank"),
            std::string::npos);
  EXPECT_NE(plan_error([](LaunchOptions& c) { c.world_info = "a:0", c.node_rank = 0; }, two_hosts())
                .find("mutually exclusive"),
            std::string::npos);
  EXPECT_NE(plan_error([](LaunchOptions& c) { c.num_nodes = 3; }, two_hosts()).find("only 2 hosts"),
            std::string::npos);
  EXPECT_NE(plan_error([](LaunchOptions& c) { c.num_procs = 3; }, two_hosts()).find("'a' has only 2 slots"),
            std::string::npos);
}

TEST(Process, FindProgramSearchesPathAndExplainsFailures) {
  EXPECT_EQ(find_program("sh", "/nonexistent:/bin:/usr/bin"), "/bin/sh");
  EXPECT_EQ(find_program("/bin/sh", ""), "/bin/sh");
  EXPECT_ERROR_HAS(find_program("no-such-program-xyz", "/bin:/usr/bin"),
                   "'no-such-program-xyz' not found in PATH");
  EXPECT_ERROR_HAS(find_program("/nonexistent/prog", ""), "does not exist");
  EXPECT_ERROR_HAS(find_program("/tmp", ""), "is a directory");
  EXPECT_ERROR_HAS(find_program("", ""), "no program");
  char tmpl[] = "/tmp/ds_launch_noexec.XXXXXX";
  int fd = ::mkstemp(tmpl);
  ASSERT_GE(fd, 0);
  ::close(fd);
  std::string dir = std::string(tmpl).substr(0, std::string(tmpl).rfind('/'));
  std::string name = std::string(tmpl).substr(dir.size() + 1);
  EXPECT_ERROR_HAS(find_program(tmpl, ""), "is not executable");
  EXPECT_ERROR_HAS(find_program(name, dir), "is not executable");
  ::unlink(tmpl);
}

TEST(Process, DescribesExitStatusesAndSignals) {
  EXPECT_EQ(describe_wait_status(3 << 8), "exited with status 3");
  EXPECT_EQ(describe_wait_status(SIGKILL), "was killed by signal 9 (SIGKILL)");
  EXPECT_EQ(exit_code_of(3 << 8), 3);
  EXPECT_EQ(exit_code_of(SIGKILL), 137);
  EXPECT_TRUE(wait_status_failed(SIGTERM));
  EXPECT_FALSE(wait_status_failed(0));
  EXPECT_EQ(signal_name(SIGTERM), "SIGTERM");
  EXPECT_EQ(describe_rank_failure(2, 1234, SIGKILL, "", 3),
            "rank 2 (pid 1234) was killed by signal 9 (SIGKILL); stopped the other 3 ranks");
  EXPECT_EQ(describe_rank_failure(0, 7, 1 << 8, " on w1", 1),
            "rank 0 (pid 7) on w1 exited with status 1; stopped the other 1 rank");
  EXPECT_EQ(describe_rank_failure(0, 7, 1 << 8, "", 0), "rank 0 (pid 7) exited with status 1");
}

TEST(Process, UniqueFdClosesAndMoves) {
  Pipe p = make_pipe();
  int raw = p.read.get();
  UniqueFd moved = std::move(p.read);
  EXPECT_FALSE(p.read.valid());
  EXPECT_EQ(moved.get(), raw);
  moved.reset();
  EXPECT_EQ(::fcntl(raw, F_GETFD), -1);  // closed
}

TEST(Port, PicksAFreePortAndSeesItInUseWhileBound) {
  int port = pick_free_port("127.0.0.1");
  EXPECT_GT(port, 0);
  EXPECT_EQ(probe_port("127.0.0.1", port), PortState::kFree);
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_port = htons(static_cast<uint16_t>(port));
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa), 0);
  ASSERT_EQ(::listen(fd, 1), 0);
  EXPECT_EQ(probe_port("127.0.0.1", port), PortState::kInUse);
  ::close(fd);
  EXPECT_EQ(probe_port("192.0.2.1", 29500), PortState::kNotLocal);  // TEST-NET-1, never ours
  EXPECT_THROW(pick_free_port("192.0.2.1"), ds::SystemError);
}

TEST(Slurm, SrunCommandPlacesTasksPerNodeAndNodeLists) {
  SrunSpec spec;
  spec.nodes = 2;
  spec.tasks_per_node = 4;
  spec.nodelist = {"n1", "n2"};
  spec.extra_args = {"--label"};
  spec.program = {"./train", "x"};
  EXPECT_EQ(srun_command(spec), (std::vector<std::string>{"srun", "--nodes=2", "--ntasks-per-node=4", "--nodelist=n1,n2",
                                                          "--kill-on-bad-exit=1", "--export=ALL", "--label", "./train",
                                                          "x"}));
  SrunSpec plain;
  plain.exclude = {"bad1", "bad2"};
  plain.program = {"./train"};
  EXPECT_EQ(srun_command(plain), (std::vector<std::string>{"srun", "--ntasks-per-node=1", "--exclude=bad1,bad2",
                                                           "--kill-on-bad-exit=1", "--export=ALL", "./train"}));
}

TEST(Slurm, OptionsThatSlurmDecidesAreRefused) {
  LaunchOptions o;
  o.program = {"./train"};
  o.launcher = LauncherKind::kSlurm;
  o.num_nodes = 2;  // no hostfile needed: Slurm has the nodes
  EXPECT_EQ(make_plan(o, {}).mode, LaunchMode::kSlurm);
  o.node_rank = 0;
  EXPECT_ERROR_HAS(make_plan(o, {}), "--launcher slurm takes its nodes from Slurm");
}

// The Slurm job around the launcher against its options (an environment given as a map).
TEST(Slurm, JobVariablesThatContradictTheOptionsAreOneLine) {
  auto env_of = [](std::map<std::string, std::string> m) {
    return [m](const char* k) -> const char* {
      auto it = m.find(k);
      return it == m.end() ? nullptr : it->second.c_str();
    };
  };
  LaunchOptions o;
  o.program = {"./train"};
  o.num_procs = 2;
  // ds-launch run by srun as one of 2 tasks: each would start a world of its own.
  const auto step = env_of({{"SLURM_JOB_ID", "42"}, {"SLURM_STEP_ID", "0"}, {"SLURM_NTASKS", "2"}});
  EXPECT_ERROR_HAS(check_slurm_job(o, step), "ds-launch is one of 2 tasks of Slurm step 42.0 (SLURM_NTASKS=2) and each "
                                             "would start --num_procs 2 ranks as a world of its own");
  // One task: the ranks are ds-launch's; the step's ids are hidden from them.
  const auto one = env_of({{"SLURM_JOB_ID", "42"}, {"SLURM_STEP_ID", "0"}, {"SLURM_NTASKS", "1"}});
  EXPECT_EQ(check_slurm_job(o, one), (std::vector<EnvVar>{{"SLURM_STEP_ID", ""}, {"SLURM_STEPID", ""}}));
  EXPECT_TRUE(check_slurm_job(o, env_of({})).empty());
  o.launcher = LauncherKind::kSlurm;
  EXPECT_ERROR_HAS(check_slurm_job(o, one), "already inside Slurm step 42.0");
  const auto batch = env_of({{"SLURM_JOB_ID", "7"}, {"SLURM_JOB_NUM_NODES", "2"}, {"SLURM_NTASKS_PER_NODE", "2(x2)"}});
  EXPECT_TRUE(check_slurm_job(o, batch).empty());
  o.num_procs = 4;
  EXPECT_ERROR_HAS(check_slurm_job(o, batch), "--num_procs 4 ranks per node but Slurm job 7 allows 2 tasks per node");
  o.num_procs = 2, o.num_nodes = 3;
  EXPECT_ERROR_HAS(check_slurm_job(o, batch), "--num_nodes 3 but Slurm job 7 has 2 nodes (SLURM_JOB_NUM_NODES)");
}
