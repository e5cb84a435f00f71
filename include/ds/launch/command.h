// Command lines the launcher builds: the per-node command run through a remote shell, the
// mpirun command, and the environment exported to other hosts. Pure functions, no processes.
//
// A remote-shell template names how to run a command on a host. Placeholders:
//   {host}       the node's host name          {node_rank}  the node's index in the world
//   {cmd}        the per-node command as ONE shell-quoted string, for transports that hand a
//                string to a shell on the other side (ssh)
// Without {cmd} the per-node command is appended as separate arguments, for transports that
// exec a program (`ip netns exec {host}`, `docker exec {host}`); an ssh/rsh template without
// {cmd} gets " {cmd}" appended, since ssh always goes through the remote shell.
//
//   auto argv = ds::launch::expand_remote_template("ssh -o BatchMode=yes {host} {cmd}", "w1", 1,
//                                                  {"/opt/ds/bin/ds-launch", "--node_rank=1", ...});
//   // {"ssh", "-o", "BatchMode=yes", "w1", "/opt/ds/bin/ds-launch --node_rank=1 ..."}
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "ds/launch/hostfile.h"
#include "ds/launch/ranks.h"

namespace ds::launch {

inline constexpr const char* kDefaultRemoteTemplate = "ssh -o BatchMode=yes {host} {cmd}";
inline constexpr int kDefaultMasterPort = 29500;  // torch.distributed's default

// POSIX shell quoting: words made only of safe characters stay as they are.
std::string shell_quote(std::string_view word);
std::string shell_join(const std::vector<std::string>& words);

// Splits a command template into words like a POSIX shell would (single and double quotes,
// backslashes), without expansions. Unterminated quotes throw ds::ConfigError.
std::vector<std::string> split_shell_words(std::string_view text);

// The argv that runs `node_command` on `host` through `tmpl` (see the placeholders above).
std::vector<std::string> expand_remote_template(std::string_view tmpl, const std::string& host, int node_rank,
                                                const std::vector<std::string>& node_command);

// What a per-node launcher needs to start its share of the world.
struct NodeCommandSpec {
  std::string launcher_path;  // ds-launch on the remote host
  World world;
  int node_rank = 0;
  MasterEndpoint master;
  std::string workdir;          // the remote ranks start in this directory
  std::vector<EnvVar> exports;  // set for the remote ranks
  bool prefix_output = true;
  double kill_timeout_s = 5.0;
  std::vector<std::string> program;  // PROGRAM ARGS...
};
// `ds-launch --node_rank=I --world_info=... ... --watch_stdin -- PROGRAM ARGS...`
std::vector<std::string> node_command(const NodeCommandSpec& spec);

// What `mpirun` needs to start the whole job.
struct MpirunSpec {
  std::string mpirun = "mpirun";
  World world;
  MasterEndpoint master;
  std::vector<std::string> pass_env;    // exported with their current values (-x NAME)
  std::vector<EnvVar> exports;          // exported with these values (-x NAME=VALUE)
  std::vector<std::string> extra_args;  // --launcher_args, split into words
  bool allow_run_as_root = false;
  std::vector<std::string> program;
};
// `mpirun -np N --host h1:n1,h2:n2 -x ... PROGRAM ARGS...`
std::vector<std::string> mpirun_command(const MpirunSpec& spec);

// What `srun` needs to start the whole job inside (or as) a Slurm allocation. The ranks take
// their rank, world and master from the job step's variables (ds::comm::read_job_env).
struct SrunSpec {
  std::string srun = "srun";
  int nodes = -1;                       // --nodes; -1: the allocation's
  int tasks_per_node = 1;               // --ntasks-per-node
  std::vector<std::string> nodelist;    // --nodelist (from --include)
  std::vector<std::string> exclude;     // --exclude
  std::vector<std::string> extra_args;  // --launcher_args, split into words
  std::vector<std::string> program;
};
// `srun --nodes=N --ntasks-per-node=P [--nodelist=a,b] [--exclude=c] --kill-on-bad-exit=1
// --export=ALL PROGRAM ARGS...` (the environment to add is set on srun's own environment).
std::vector<std::string> srun_command(const SrunSpec& spec);

// Parses a `.deepspeed_env`-style file: one KEY=VALUE a line, '#' comments and blank lines
// ignored, an optional leading `export `. Bad lines throw ds::ConfigError with the line number.
std::vector<EnvVar> parse_env_file(std::string_view text, std::string_view source);

// Parses `KEY=VALUE` (the --env option). Throws ds::ConfigError when there is no valid KEY.
EnvVar parse_env_assignment(std::string_view text);

// The variables of `environ` (as "KEY=VALUE" strings) that remote ranks need: PATH,
// LD_LIBRARY_PATH and families such as OMP_*, NCCL_*, GLOO_*, DS_*, PYTHON*.
std::vector<EnvVar> select_exported_env(const std::vector<std::string>& environ_entries);

// Adds or replaces `var` in `env` (keeping the first position of the key).
void set_env_var(std::vector<EnvVar>& env, const EnvVar& var);

}  // namespace ds::launch
