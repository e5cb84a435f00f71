// ds-launch as a library: options -> plan -> processes.
//
//   ds::launch::LaunchOptions opts;
//   opts.num_procs = 4;
//   opts.program = {"./train", "--steps", "100"};
//   ds::launch::LaunchResult r = ds::launch::run_launch(opts);
//   if (!r.error.empty()) std::cerr << "ds-launch: error: " << r.error << "\n";
//   return r.exit_code;
//
// Modes (chosen by make_plan from the options):
//   kLocal      all ranks on this host (no hostfile, or one host in it)
//   kNode       the ranks of one node of a multi-node world (--node_rank); run by the driver on
//               every host, or by hand on each host like torchrun
//   kMultiNode  the driver: one remote-shell command per node, each running ds-launch in kNode
//   kMpirun     hand the whole job to OpenMPI's mpirun
//   kSlurm      hand the whole job to Slurm's srun (DeepSpeed's SlurmRunner): --num_nodes,
//               --num_procs (tasks per node), --include/--exclude as --nodelist/--exclude
// Bad input (options, hostfile, program, port) throws ds::Error before anything is started.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "ds/launch/hostfile.h"
#include "ds/launch/ranks.h"

namespace ds::launch {

enum class LauncherKind { kSsh, kMpirun, kSlurm };

struct LaunchOptions {
  int num_procs = -1;    // ranks per node (--num_procs / --num_gpus); -1: not given
  int num_nodes = -1;    // first N hosts of the hostfile; -1: not given
  std::string hostfile;  // "" : no hostfile
  std::string include;   // "host1:0,1@host2"
  std::string exclude;
  std::string master_addr;  // "" : 127.0.0.1 locally, else the first host
  int master_port = -1;     // -1 : pick a free one (or 29500 when the master is not local)
  int node_rank = -1;       // >= 0 : run only this node's ranks
  std::string world_info;   // the world, encoded by the driver (kNode)
  LauncherKind launcher = LauncherKind::kSsh;
  std::string launcher_cmd;          // remote-shell template; "" : $DS_LAUNCHER_CMD or the ssh default
  std::string launcher_args;         // extra words for mpirun
  std::string remote_launcher;       // ds-launch on the other hosts; "" : this executable
  bool force_multi = false;          // use the remote shell even for a single host
  bool prefix_output = true;         // "[rankN]: " before each output line
  bool dry_run = false;              // print what would run, start nothing
  bool watch_stdin = false;          // kNode: stop when stdin closes (the driver went away)
  double kill_timeout_s = 5.0;       // SIGTERM -> SIGKILL grace period
  std::string workdir;               // chdir here first (kNode, set by the driver)
  std::vector<EnvVar> env;           // --env KEY=VALUE, for every rank
  std::vector<std::string> program;  // PROGRAM ARGS...
};

enum class LaunchMode { kLocal, kNode, kMultiNode, kMpirun, kSlurm };

struct LaunchPlan {
  LaunchMode mode = LaunchMode::kLocal;
  World world;
  int node_rank = 0;  // the node this process runs (kLocal, kNode)
  std::string master_addr;
  int master_port = -1;            // -1 : to be chosen when running
  bool master_is_default = false;  // master_addr was not given
};

// Decides what to run from the options and the hostfile's entries (empty when there is no
// hostfile). Pure; throws ds::ConfigError for contradictory or out-of-range options.
LaunchPlan make_plan(const LaunchOptions& options, const std::vector<HostEntry>& hostfile);

// What the Slurm job this launcher runs in (its SLURM_* variables, looked up with `env`) says
// against the options: a launcher inside a job step of several tasks would start its ranks
// once per task; --num_nodes or --num_procs beyond the allocation cannot be placed. Throws
// ds::ConfigError naming both values. Also returns the variables the local ranks get so that
// they take their ranks from ds-launch, not from the step (the step's ids emptied).
std::vector<EnvVar> check_slurm_job(const LaunchOptions& options, const std::function<const char*(const char*)>& env);

struct LaunchResult {
  int exit_code = 0;
  std::string error;  // one line for the user, without the "ds-launch: error: " prefix
};

// Runs the job (or prints it, with dry_run). Blocks until every rank is gone.
LaunchResult run_launch(const LaunchOptions& options);

// The one-line error for a rank failure: "rank 2 (pid 1234) was killed by signal 9 (SIGKILL);
// stopped the other 3 ranks". `where` (may be empty) follows the pid: " on w1".
std::string describe_rank_failure(int rank, long pid, int wait_status, const std::string& where,
                                  size_t others_stopped);

}  // namespace ds::launch
