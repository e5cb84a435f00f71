// ds-launch: starts the ranks of a distributed job, locally or across hosts (see docs/LAUNCH.md).
//
//   ds-launch --num_procs 4 ./train --steps 100
//   ds-launch --hostfile hosts --include "w0:0,1@w1" ./train
//   ds-launch --hostfile hosts --launcher mpirun --dry_run ./train
//   ds-launch --launcher slurm --num_nodes 2 --num_procs 4 ./train     # srun, in or for a Slurm job
#include <CLI/CLI.hpp>

#include <cstdio>
#include <string>
#include <vector>

#include "ds/common/cli.h"
#include "ds/common/error.h"
#include "ds/common/strings.h"
#include "ds/launch/command.h"
#include "ds/launch/launcher.h"

namespace {

constexpr const char* kFooter =
    R"(Each rank gets MASTER_ADDR MASTER_PORT RANK WORLD_SIZE LOCAL_RANK LOCAL_WORLD_SIZE
GROUP_RANK NODE_RANK (and torchrun's / DeepSpeed's other names). If a rank fails, the others are
stopped (SIGTERM, then SIGKILL after --kill_timeout) and ds-launch exits with its status.
Environment: DS_LAUNCHER_CMD is the default of --launcher_cmd.)";

void fail(const std::string& msg) { std::fprintf(stderr, "ds-launch: error: %s\n", msg.c_str()); }

struct Cli {
  ds::launch::LaunchOptions opts;
  std::string launcher = "ssh";
  std::vector<std::string> env;
};

void add_options(CLI::App& app, Cli& cli) {
  auto& o = cli.opts;
  app.add_option("--num_procs,--num_gpus,--num_accelerators,--nproc_per_node", o.num_procs,
                 "ranks per node (default 1; with a hostfile: the first N slots of every host)")
      ->check(ds::cli::int_range(1, 65536));
  app.add_option("--num_nodes", o.num_nodes, "use the first N hosts of the hostfile")->check(ds::cli::int_range(1, 65536));
  app.add_option("-H,--hostfile", o.hostfile, "hosts to run on, lines 'HOST slots=N'");
  app.add_option("-i,--include", o.include, "only these hosts/slots: HOST[:SLOT,...][@HOST...]");
  app.add_option("-e,--exclude", o.exclude, "all but these hosts/slots: HOST[:SLOT,...][@HOST...]");
  app.add_option("--master_addr", o.master_addr, "address of rank 0 (default 127.0.0.1, or the first host)");
  app.add_option("--master_port", o.master_port, "port of rank 0 (default: a free one)");
  app.add_option("--node_rank", o.node_rank, "start only this node's ranks (one node of a multi-node job)");
  app.add_option("--world_info", o.world_info, "the world as HOST:SLOTS@... (set by the multi-node driver)");
  app.add_option("--launcher", cli.launcher,
                 "how to start the ranks: ssh (remote shell), mpirun, or slurm (srun inside/for a Slurm job)")
      ->check(CLI::IsMember({"ssh", "pdsh", "mpirun", "openmpi", "slurm"}, CLI::ignore_case));
  app.add_option("--launcher_cmd", o.launcher_cmd,
                 "remote-shell template with {host}, {node_rank}, {cmd} (default $DS_LAUNCHER_CMD or '" +
                     std::string(ds::launch::kDefaultRemoteTemplate) + "')");
  app.add_option("--launcher_args", o.launcher_args, "extra arguments for mpirun, as one string");
  app.add_option("--remote_launcher", o.remote_launcher,
                 "path of ds-launch on the other hosts (default: this one)");
  app.add_flag("--force_multi", o.force_multi, "use the remote shell even for a single host");
  app.add_flag(
      "--no_prefix", [&o](int64_t) { o.prefix_output = false; }, "do not prefix output lines with [rankN]:");
  app.add_flag("--dry_run", o.dry_run, "print what would be started and exit");
  app.add_option("--kill_timeout", o.kill_timeout_s,
                 "seconds between SIGTERM and SIGKILL when stopping ranks (default 5)");
  app.add_option("--env", cli.env, "KEY=VALUE for every rank (repeatable)")->allow_extra_args(false);
  app.add_option("--workdir", o.workdir, "change to this directory first (set by the multi-node driver)");
  app.add_flag("--watch_stdin", o.watch_stdin, "stop when stdin closes (set by the multi-node driver)");
}

// Everything CLI11 did not consume: PROGRAM ARGS..., after an optional "--".
// A leading "-x" here is an option we do not know, not a program.
std::vector<std::string> program_args(const CLI::App& app) {
  std::vector<std::string> rest = app.remaining();
  if (!rest.empty() && rest[0] == "--") return {rest.begin() + 1, rest.end()};
  if (!rest.empty() && ds::starts_with(rest[0], "-")) {
    std::string name = rest[0].substr(0, rest[0].find('='));
    std::vector<std::string> known;
    for (const CLI::Option* opt : app.get_options())
      for (const std::string& n : opt->get_lnames()) known.push_back("--" + n);
    std::string hint = ds::nearest(name, known);
    throw ds::ConfigError(
        ds::str("unknown option '", name, "'", hint.empty() ? "" : "; did you mean '" + hint + "'?"));
  }
  return rest;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"ds-launch: start the ranks of a distributed job, on this host or across hosts", "ds-launch"};
  app.prefix_command();
  app.footer(kFooter);
  Cli cli;
  add_options(app, cli);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);
    fail(e.what());
    return 2;
  }
  try {
    cli.opts.program = program_args(app);
    const std::string& kind = cli.launcher;  // IsMember(ignore_case) gives the listed spelling
    cli.opts.launcher = (kind == "mpirun" || kind == "openmpi") ? ds::launch::LauncherKind::kMpirun
                        : kind == "slurm"                      ? ds::launch::LauncherKind::kSlurm
                                                               : ds::launch::LauncherKind::kSsh;
    for (const std::string& e : cli.env) cli.opts.env.push_back(ds::launch::parse_env_assignment(e));
    ds::launch::LaunchResult r = ds::launch::run_launch(cli.opts);
    if (!r.error.empty()) fail(r.error);
    return r.exit_code;
  } catch (const ds::ConfigError& e) {
    fail(e.what());
    return 2;
  } catch (const std::exception& e) {
    fail(e.what());
    return 1;
  }
}
