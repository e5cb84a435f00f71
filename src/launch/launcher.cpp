#include "ds/launch/launcher.h"

#include <limits.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>

#include "ds/common/error.h"
#include "ds/common/strings.h"
#include "ds/launch/command.h"
#include "ds/launch/net.h"
#include "ds/launch/output.h"
#include "ds/launch/process.h"
#include "ds/launch/supervisor.h"

namespace ds::launch {

namespace {

constexpr const char* kErrorLinePrefix = "ds-launch: error: ";
constexpr const char* kEnvFileName = ".deepspeed_env";  // DeepSpeed's name, same format
constexpr double kDriverExtraGrace = 2.0;               // lets per-node launchers finish their own stop first

void check_options(const LaunchOptions& o, bool have_hostfile) {
  if (o.program.empty())
    throw ConfigError("no program to launch (usage: ds-launch [OPTIONS] PROGRAM [ARGS...])");
  if (o.num_procs != -1 && o.num_procs < 1)
    throw ConfigError(str("--num_procs must be at least 1, got ", o.num_procs));
  if (o.num_nodes != -1 && o.num_nodes < 1)
    throw ConfigError(str("--num_nodes must be at least 1, got ", o.num_nodes));
  if (o.master_port != -1 && (o.master_port < 1 || o.master_port > 65535))
    throw ConfigError(str("--master_port must be in 1..65535, got ", o.master_port));
  if (o.kill_timeout_s < 0) throw ConfigError(str("--kill_timeout must be >= 0, got ", o.kill_timeout_s));
  if (o.node_rank < -1) throw ConfigError(str("--node_rank must be >= 0, got ", o.node_rank));
  bool filtered = !o.include.empty() || !o.exclude.empty();
  if (!o.include.empty() && !o.exclude.empty())
    throw ConfigError("--include and --exclude are mutually exclusive");
  if (o.launcher == LauncherKind::kSlurm) {
    if (have_hostfile || !o.world_info.empty() || o.node_rank >= 0)
      throw ConfigError("--launcher slurm takes its nodes from Slurm: use --num_nodes, --include or --exclude "
                        "instead of --hostfile, --world_info or --node_rank");
    return;
  }
  if (filtered && (o.num_nodes != -1 || o.num_procs != -1))
    throw ConfigError("--num_nodes/--num_procs cannot be combined with --include/--exclude");
  if (filtered && !have_hostfile) throw ConfigError("--include/--exclude need a --hostfile to pick from");
  if (!o.world_info.empty() && have_hostfile)
    throw ConfigError("--world_info and --hostfile are mutually exclusive");
  if (!o.world_info.empty() && o.node_rank < 0) throw ConfigError("--world_info needs --node_rank");
  if (o.launcher == LauncherKind::kMpirun && o.node_rank >= 0)
    throw ConfigError(
        "--node_rank starts one node of ds-launch's own launcher; it cannot be used with --launcher mpirun");
}

// The world when there is no hostfile: num_nodes identical nodes of num_procs slots.
World synthetic_world(const LaunchOptions& o) {
  int nodes = o.num_nodes == -1 ? 1 : o.num_nodes;
  int procs = o.num_procs == -1 ? 1 : o.num_procs;
  if (nodes > 1 && o.node_rank < 0)
    throw ConfigError(
        str("--num_nodes ", nodes,
            " needs a --hostfile listing the hosts (or --node_rank to start one node by hand)"));
  World world;
  for (int n = 0; n < nodes; ++n) {
    Node node{nodes == 1 ? "localhost" : str("node", n), {}};
    for (int s = 0; s < procs; ++s) node.slots.push_back(s);
    world.push_back(std::move(node));
  }
  return world;
}

std::string effective_path_env(const LaunchOptions& o) {
  for (const EnvVar& e : o.env)
    if (e.first == "PATH") return e.second;
  const char* p = std::getenv("PATH");
  return p ? p : "/usr/local/bin:/usr/bin:/bin";
}

bool env_has(const LaunchOptions& o, const std::string& key) {
  for (const EnvVar& e : o.env)
    if (e.first == key) return true;
  return std::getenv(key.c_str()) != nullptr;
}

// Port for a job whose rank 0 runs on this host: the given one if free, else a free one, held
// in `reserved` until the job ends.
int local_master_port(const LaunchPlan& plan, PortReservation& reserved) {
  if (plan.master_port == -1) {
    reserved = reserve_free_port(plan.master_addr);
    return reserved.port();
  }
  switch (probe_port(plan.master_addr, plan.master_port)) {
    case PortState::kInUse:
      throw Error(str("--master_port ", plan.master_port, " is already in use on ", plan.master_addr,
                      "; choose another port, or leave --master_port out to pick a free one"));
    case PortState::kDenied:
      throw Error(str("--master_port ", plan.master_port, " on ", plan.master_addr,
                      " cannot be bound (permission denied: ports below 1024 need privileges)"));
    case PortState::kFree:
    case PortState::kNotLocal:
      break;
  }
  return plan.master_port;
}

// Port for a job whose rank 0 may be on another host: a free one (held in `reserved`) when the
// master address is ours, else torch.distributed's default.
int remote_master_port(const LaunchPlan& plan, PortReservation& reserved) {
  if (plan.master_port != -1) {
    if (probe_port(plan.master_addr, plan.master_port) == PortState::kNotLocal) return plan.master_port;
    return local_master_port(plan, reserved);
  }
  if (probe_port(plan.master_addr, kDefaultMasterPort) == PortState::kNotLocal) return kDefaultMasterPort;
  reserved = reserve_free_port(plan.master_addr);
  return reserved.port();
}

// .deepspeed_env in $HOME, then in the current directory (the later one wins).
std::vector<EnvVar> read_env_files() {
  std::vector<EnvVar> out;
  std::vector<std::string> dirs;
  if (const char* home = std::getenv("HOME")) dirs.push_back(home);
  dirs.push_back(".");
  for (const std::string& dir : dirs) {
    std::string path = dir + "/" + kEnvFileName;
    std::ifstream in(path);
    if (!in) continue;
    std::ostringstream text;
    text << in.rdbuf();
    for (const EnvVar& e : parse_env_file(text.str(), path)) set_env_var(out, e);
  }
  return out;
}

std::string current_dir() {
  char buf[PATH_MAX];
  DS_CHECK(::getcwd(buf, sizeof buf) != nullptr, "getcwd: ", std::strerror(errno));
  return buf;
}

void print_line(const std::string& line) {
  std::fputs((line + "\n").c_str(), stdout);
  std::fflush(stdout);
}

std::string stopped_suffix(size_t n, const std::string& noun) {
  return n == 0 ? std::string() : str("; stopped the other ", plural(n, noun));
}

LaunchResult run_ranks(const LaunchOptions& o, const LaunchPlan& plan) {
  const NodeRanks node = node_ranks(plan.world, plan.node_rank);
  const std::string path = find_program(o.program[0], effective_path_env(o));
  MasterEndpoint master{plan.master_addr, plan.master_port};
  PortReservation reserved;  // held while the ranks run
  if (plan.node_rank == 0) master.port = local_master_port(plan, reserved);
  DS_CHECK(master.port > 0, "--master_port is required for node ", plan.node_rank);
  std::vector<EnvVar> common = o.env;
  if (!env_has(o, "OMP_NUM_THREADS") && node.ranks.size() > 1) {
    long cpus = ::sysconf(_SC_NPROCESSORS_ONLN);
    int threads = default_omp_threads(static_cast<int>(cpus), static_cast<int>(node.ranks.size()));
    common.emplace_back("OMP_NUM_THREADS", std::to_string(threads));
  }
  // libgomp's idle threads spin by default and starve OpenBLAS's and our optimizer's threads
  // on small machines (a 124M-parameter step: 4.8 s spinning, 2.0 s passive). It is read
  // when libgomp loads, so it has to come from the environment.
  if (!env_has(o, "OMP_WAIT_POLICY")) common.emplace_back("OMP_WAIT_POLICY", "PASSIVE");
  std::vector<ChildSpec> children;
  for (const RankInfo& r : node.ranks) {
    ChildSpec c;
    c.label = str("rank ", r.rank);
    c.path = path;
    c.argv = o.program;
    c.env = common;
    for (const EnvVar& e : rank_env(node, r, master)) set_env_var(c.env, e);
    c.capture_output = o.prefix_output;
    c.output_prefix = rank_prefix(r.rank);
    children.push_back(std::move(c));
  }
  if (o.dry_run) {
    for (const ChildSpec& c : children) {
      std::vector<std::string> words = {"env"};
      for (const EnvVar& e : c.env) words.push_back(e.first + "=" + e.second);
      words.insert(words.end(), c.argv.begin(), c.argv.end());
      print_line(shell_join(words));
    }
    return {};
  }
  SuperviseOptions so;
  so.kill_timeout_s = o.kill_timeout_s;
  so.watch_stdin = o.watch_stdin;
  SuperviseResult r = supervise(children, so);
  LaunchResult out{r.exit_code, ""};
  const std::string where = plan.mode == LaunchMode::kNode ? " on " + node.host : "";
  if (r.failure) {
    const RankInfo& rank = node.ranks[r.failure->index];
    out.error =
        describe_rank_failure(rank.rank, r.failure->pid, r.failure->wait_status, where, r.stopped.size());
  } else if (r.stop_signal) {
    out.error =
        str("received ", signal_name(r.stop_signal), "; stopped ", plural(r.stopped.size(), "rank"), where);
  } else if (r.stdin_closed) {
    out.error = str("the launcher that started this node went away (stdin closed); stopped ",
                    plural(r.stopped.size(), "rank"), where);
  }
  return out;
}

// "...; stopped the other 3 ranks" -> 3 (0 when the line has no such part).
size_t stopped_count_in(const std::string& line) {
  const std::string marker = "; stopped the other ";
  size_t pos = line.find(marker);
  if (pos == std::string::npos) return 0;
  return static_cast<size_t>(std::strtoul(line.c_str() + pos + marker.size(), nullptr, 10));
}

// The driver's one line for a failed node, built from the node launcher's own error line:
// "rank 3 (pid 77) on w1 exited with status 7; stopped the other 3 ranks" where the count adds
// the ranks the failing node stopped to those of the other nodes the driver stopped.
std::string describe_node_failure(const LaunchPlan& plan, const ChildSpec& node, const ChildExit& exit,
                                  const std::vector<size_t>& stopped_nodes) {
  size_t other_ranks = 0;
  for (size_t i : stopped_nodes) other_ranks += plan.world[i].slots.size();
  std::string line = exit.error_line;
  if (starts_with(line, kErrorLinePrefix)) line = line.substr(std::string(kErrorLinePrefix).size());
  if (starts_with(line, "rank ")) {
    other_ranks += stopped_count_in(line);
    return line.substr(0, line.find("; stopped")) + stopped_suffix(other_ranks, "rank");
  }
  if (!line.empty()) return str(node.label, ": ", line, stopped_suffix(other_ranks, "rank"));
  return str("node ", exit.index, " (", plan.world[exit.index].host, ", pid ", exit.pid, ") ",
             describe_wait_status(exit.wait_status), stopped_suffix(other_ranks, "rank"));
}

std::vector<EnvVar> remote_exports(const LaunchOptions& o) {
  std::vector<EnvVar> exports = select_exported_env(environ_entries());
  for (const EnvVar& e : read_env_files()) set_env_var(exports, e);
  for (const EnvVar& e : o.env) set_env_var(exports, e);
  return exports;
}

LaunchResult run_multi_node(const LaunchOptions& o, const LaunchPlan& plan) {
  NodeCommandSpec spec;
  spec.launcher_path = o.remote_launcher.empty() ? self_exe_path() : o.remote_launcher;
  spec.world = plan.world;
  PortReservation reserved;  // held while the nodes run
  spec.master = {plan.master_addr, remote_master_port(plan, reserved)};
  spec.workdir = current_dir();
  spec.exports = remote_exports(o);
  spec.prefix_output = o.prefix_output;
  spec.kill_timeout_s = o.kill_timeout_s;
  spec.program = o.program;
  std::string tmpl = o.launcher_cmd;
  if (tmpl.empty())
    tmpl = std::getenv("DS_LAUNCHER_CMD") ? std::getenv("DS_LAUNCHER_CMD") : kDefaultRemoteTemplate;
  const char* path_env = std::getenv("PATH");
  std::vector<ChildSpec> children;
  for (size_t i = 0; i < plan.world.size(); ++i) {
    spec.node_rank = static_cast<int>(i);
    ChildSpec c;
    c.label = str("node ", i, " (", plan.world[i].host, ")");
    c.argv = expand_remote_template(tmpl, plan.world[i].host, spec.node_rank, node_command(spec));
    c.path = o.dry_run ? c.argv[0] : find_program(c.argv[0], path_env ? path_env : "");
    c.capture_output = true;
    c.capture_errors = true;
    c.stdin_mode = StdinMode::kPipe;
    children.push_back(std::move(c));
  }
  if (o.dry_run) {
    for (const ChildSpec& c : children) print_line(shell_join(c.argv));
    return {};
  }
  SuperviseOptions so;
  so.kill_timeout_s = o.kill_timeout_s + kDriverExtraGrace;
  so.watch_stdin = o.watch_stdin;
  SuperviseResult r = supervise(children, so);
  LaunchResult out{r.exit_code, ""};
  if (r.failure) {
    out.error = describe_node_failure(plan, children[r.failure->index], *r.failure, r.stopped);
  } else if (r.stop_signal) {
    out.error = str("received ", signal_name(r.stop_signal), "; stopped ", plural(r.stopped.size(), "node"));
  } else if (r.stdin_closed) {
    out.error = str("stdin closed; stopped ", plural(r.stopped.size(), "node"));
  }
  return out;
}

LaunchResult run_mpirun(const LaunchOptions& o, const LaunchPlan& plan) {
  const char* path_env = std::getenv("PATH");
  MpirunSpec spec;
  spec.mpirun = o.dry_run ? "mpirun" : find_program("mpirun", path_env ? path_env : "");
  if (o.hostfile.empty()) find_program(o.program[0], effective_path_env(o));  // all ranks are local
  spec.world = plan.world;
  PortReservation reserved;  // held while mpirun runs
  spec.master = {plan.master_addr, remote_master_port(plan, reserved)};
  for (const EnvVar& e : select_exported_env(environ_entries())) spec.pass_env.push_back(e.first);
  for (const EnvVar& e : read_env_files()) set_env_var(spec.exports, e);
  for (const EnvVar& e : o.env) set_env_var(spec.exports, e);
  spec.extra_args = split_shell_words(o.launcher_args);
  spec.allow_run_as_root = ::geteuid() == 0;  // OpenMPI refuses root without it
  spec.program = o.program;
  ChildSpec c;
  c.label = "mpirun";
  c.path = spec.mpirun;
  c.argv = mpirun_command(spec);
  c.capture_output = false;  // mpirun tags and forwards the ranks' output itself
  if (o.dry_run) {
    print_line(shell_join(c.argv));
    return {};
  }
  SuperviseOptions so;
  so.kill_timeout_s = o.kill_timeout_s + kDriverExtraGrace;
  SuperviseResult r = supervise({c}, so);
  LaunchResult out{r.exit_code, ""};
  if (r.failure)
    out.error = str("mpirun (pid ", r.failure->pid, ") ", describe_wait_status(r.failure->wait_status));
  if (r.stop_signal) out.error = str("received ", signal_name(r.stop_signal), "; stopped mpirun");
  return out;
}

// --include/--exclude under Slurm: whole hosts (Slurm places the tasks, so no slots).
std::vector<std::string> slurm_hosts(const std::string& spec, const char* option) {
  std::vector<std::string> hosts;
  if (spec.empty()) return hosts;
  for (const std::string& entry : split(spec, '@')) {
    const std::string host = trim(entry);
    if (host.empty() || host.find(':') != std::string::npos)
      throw ConfigError(str(option, " '", spec, "': under --launcher slurm name whole nodes, HOST[@HOST...] (Slurm ",
                            "places the tasks; slots ':0,1' do not apply)"));
    hosts.push_back(host);
  }
  return hosts;
}

LaunchResult run_srun(const LaunchOptions& o) {
  const char* path_env = std::getenv("PATH");
  SrunSpec spec;
  spec.srun = o.dry_run ? "srun" : find_program("srun", path_env ? path_env : "");
  spec.nodes = o.num_nodes;
  spec.tasks_per_node = o.num_procs == -1 ? 1 : o.num_procs;
  spec.nodelist = slurm_hosts(o.include, "--include");
  spec.exclude = slurm_hosts(o.exclude, "--exclude");
  if (spec.nodes == -1 && !spec.nodelist.empty()) spec.nodes = int(spec.nodelist.size());
  spec.extra_args = split_shell_words(o.launcher_args);
  spec.program = o.program;
  // srun exports its own environment (--export=ALL): what the ranks need is set on it.
  std::vector<EnvVar> env = read_env_files();
  for (const EnvVar& e : o.env) set_env_var(env, e);
  if (!o.master_addr.empty()) set_env_var(env, {"MASTER_ADDR", o.master_addr});
  if (o.master_port != -1) set_env_var(env, {"MASTER_PORT", std::to_string(o.master_port)});
  if (!env_has(o, "LOCAL_WORLD_SIZE")) set_env_var(env, {"LOCAL_WORLD_SIZE", std::to_string(spec.tasks_per_node)});
  if (!env_has(o, "OMP_WAIT_POLICY")) set_env_var(env, {"OMP_WAIT_POLICY", "PASSIVE"});
  ChildSpec c;
  c.label = "srun";
  c.path = spec.srun;
  c.argv = srun_command(spec);
  c.env = env;
  c.capture_output = false;  // srun forwards the ranks' output (srun --label tags it)
  if (o.dry_run) {
    std::vector<std::string> words = {"env"};
    for (const EnvVar& e : env) words.push_back(e.first + "=" + e.second);
    words.insert(words.end(), c.argv.begin(), c.argv.end());
    print_line(shell_join(words));
    return {};
  }
  SuperviseOptions so;
  so.kill_timeout_s = o.kill_timeout_s + kDriverExtraGrace;
  SuperviseResult r = supervise({c}, so);
  LaunchResult out{r.exit_code, ""};
  if (r.failure) out.error = str("srun (pid ", r.failure->pid, ") ", describe_wait_status(r.failure->wait_status));
  if (r.stop_signal) out.error = str("received ", signal_name(r.stop_signal), "; stopped srun");
  return out;
}

}  // namespace

LaunchPlan make_plan(const LaunchOptions& o, const std::vector<HostEntry>& hostfile) {
  check_options(o, !hostfile.empty());
  LaunchPlan plan;
  if (o.launcher == LauncherKind::kSlurm) {  // Slurm places the ranks and names the master
    plan.mode = LaunchMode::kSlurm;
    return plan;
  }
  if (!o.world_info.empty()) {
    plan.world = decode_world(o.world_info);
  } else if (!hostfile.empty()) {
    plan.world =
        limit_world(filter_world(world_from_pool(hostfile), o.include, o.exclude), o.num_nodes, o.num_procs);
  } else {
    plan.world = synthetic_world(o);
  }
  if (o.launcher == LauncherKind::kMpirun) {
    plan.mode = LaunchMode::kMpirun;
  } else if (o.node_rank >= 0) {
    plan.mode = LaunchMode::kNode;
    plan.node_rank = node_ranks(plan.world, o.node_rank).node_rank;  // range check
  } else if (plan.world.size() > 1 || (o.force_multi && !hostfile.empty())) {
    plan.mode = LaunchMode::kMultiNode;
  }
  plan.master_is_default = o.master_addr.empty();
  plan.master_port = o.master_port;
  if (!o.master_addr.empty()) {
    plan.master_addr = o.master_addr;
  } else if (plan.mode == LaunchMode::kLocal || (hostfile.empty() && o.world_info.empty())) {
    if (plan.world.size() > 1)
      throw ConfigError(
          "--master_addr is required when the nodes come from --num_nodes instead of a hostfile");
    plan.master_addr = "127.0.0.1";
  } else {
    plan.master_addr = plan.world[0].host;
  }
  if (plan.mode == LaunchMode::kNode && plan.world.size() > 1 && plan.master_port == -1)
    throw ConfigError("--master_port is required with --node_rank: every node must use the same port");
  return plan;
}

std::string describe_rank_failure(int rank, long pid, int wait_status, const std::string& where,
                                  size_t others_stopped) {
  return str("rank ", rank, " (pid ", pid, ")", where, " ", describe_wait_status(wait_status),
             stopped_suffix(others_stopped, "rank"));
}

std::vector<EnvVar> check_slurm_job(const LaunchOptions& o, const std::function<const char*(const char*)>& env) {
  auto text = [&](const char* k) -> std::string {
    const char* v = env(k);
    return v ? v : "";
  };
  auto number = [&](const char* k) { return text(k).empty() ? -1 : std::atoi(text(k).c_str()); };  // "2(x3)" -> 2
  const std::string step = !text("SLURM_STEP_ID").empty() ? text("SLURM_STEP_ID") : text("SLURM_STEPID");
  const std::string job = text("SLURM_JOB_ID").empty() ? text("SLURM_JOBID") : text("SLURM_JOB_ID");
  if (o.launcher == LauncherKind::kSlurm) {
    if (!step.empty())
      throw ConfigError(str("--launcher slurm runs srun, but this is already inside Slurm step ", job, ".", step,
                            ": start ds-launch from the batch script (or a login node), not through srun"));
    const int nodes = number("SLURM_JOB_NUM_NODES"), per_node = number("SLURM_NTASKS_PER_NODE");
    if (nodes > 0 && o.num_nodes > nodes)
      throw ConfigError(str("--num_nodes ", o.num_nodes, " but Slurm job ", job, " has ", nodes,
                            " nodes (SLURM_JOB_NUM_NODES): lower --num_nodes or ask sbatch for more nodes"));
    if (per_node > 0 && o.num_procs > per_node)
      throw ConfigError(str("--num_procs ", o.num_procs, " ranks per node but Slurm job ", job, " allows ", per_node,
                            " tasks per node (SLURM_NTASKS_PER_NODE): lower --num_procs or raise sbatch's "
                            "--ntasks-per-node"));
    return {};
  }
  if (step.empty() || o.launcher != LauncherKind::kSsh) return {};
  const int tasks = number("SLURM_STEP_NUM_TASKS") > 0 ? number("SLURM_STEP_NUM_TASKS") : number("SLURM_NTASKS");
  if (tasks > 1 && o.node_rank < 0)
    throw ConfigError(str("ds-launch is one of ", tasks, " tasks of Slurm step ", job, ".", step,
                          " (SLURM_NTASKS=", tasks, ") and each would start --num_procs ",
                          o.num_procs == -1 ? 1 : o.num_procs, " ranks as a world of its own: let Slurm start the "
                          "ranks (ds-launch --launcher slurm, or srun PROGRAM) or run one ds-launch per node with "
                          "--node_rank"));
  // The ranks are ds-launch's, not the step's tasks: they must not read the step's ids.
  return {{"SLURM_STEP_ID", ""}, {"SLURM_STEPID", ""}};
}

LaunchResult run_launch(const LaunchOptions& given) {
  LaunchOptions options = given;
  for (const EnvVar& e : check_slurm_job(options, [](const char* k) { return std::getenv(k); }))
    set_env_var(options.env, e);
  if (!options.workdir.empty())
    DS_CHECK_SYS(::chdir(options.workdir.c_str()), "cannot change to --workdir '", options.workdir, "'");
  std::vector<HostEntry> hostfile;
  if (!options.hostfile.empty()) hostfile = read_hostfile(options.hostfile);
  LaunchPlan plan = make_plan(options, hostfile);
  switch (plan.mode) {
    case LaunchMode::kLocal:
    case LaunchMode::kNode:
      return run_ranks(options, plan);
    case LaunchMode::kMultiNode:
      return run_multi_node(options, plan);
    case LaunchMode::kMpirun:
      return run_mpirun(options, plan);
    case LaunchMode::kSlurm:
      return run_srun(options);
  }
  throw Error("unknown launch mode");
}

}  // namespace ds::launch
