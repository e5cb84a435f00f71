// Starting a set of processes and watching them until they are all gone: the core of
// `ds-launch` (ranks on one node) and of its multi-node driver (one remote shell per node).
//
//   std::vector<ds::launch::ChildSpec> children = ...;    // one per rank
//   auto result = ds::launch::supervise(children, {});
//   if (result.failure) ... describe_wait_status(result.failure->wait_status) ...
//
// Behaviour:
//  - each child runs in its own process group with PR_SET_PDEATHSIG = SIGKILL, so that signals
//    from the terminal reach only the launcher, a signal for a child reaches its whole group, and
//    a launcher killed with SIGKILL still takes its children down;
//  - SIGINT, SIGTERM, SIGHUP to the launcher are forwarded to every child; a second one sends
//    SIGKILL at once;
//  - the first child that exits non-zero or dies by a signal stops the others: SIGTERM, then
//    SIGKILL after `kill_timeout_s`;
//  - stdout and stderr of a child go through pipes and are written out line by line with the
//    child's prefix (or inherited as they are when capture_output is false);
//  - when everything has exited, anything left in the children's process groups is killed.
// Call from a single-threaded program (PR_SET_PDEATHSIG follows the thread that forks).
#pragma once

#include <sys/types.h>

#include <optional>
#include <string>
#include <vector>

#include "ds/launch/ranks.h"

namespace ds::launch {

enum class StdinMode {
  kNull,     // /dev/null
  kInherit,  // the launcher's stdin
  kPipe,     // a pipe the launcher never writes to and closes when it stops the child: the
             // child (a remote shell) sees end-of-file when the launcher goes away
};

struct ChildSpec {
  std::string label;              // names the child in messages: "rank 2", "node 1 (w1)"
  std::string path;               // the program to execute (already resolved)
  std::vector<std::string> argv;  // argv[0] included
  std::vector<EnvVar> env;        // set on top of the launcher's environment
  bool capture_output = true;     // pipe stdout/stderr through the launcher
  std::string output_prefix;      // put before each line when capturing
  bool capture_errors = false;    // keep stderr lines starting "ds-launch: error: " aside
  StdinMode stdin_mode = StdinMode::kNull;
};

struct SuperviseOptions {
  double kill_timeout_s = 5.0;   // SIGTERM -> SIGKILL grace period
  bool watch_stdin = false;      // stop everything when the launcher's stdin reaches EOF
  double drain_timeout_s = 2.0;  // after all children exited, wait this long for open pipes
  int out_fd = 1;                // where captured stdout goes
  int err_fd = 2;                // where captured stderr goes
};

struct ChildExit {
  size_t index = 0;  // into the children vector
  pid_t pid = -1;
  int wait_status = 0;
  std::string error_line;  // the last captured "ds-launch: error: ..." line, if any
};

struct SuperviseResult {
  int exit_code = 0;                 // 0, the failing child's exit_code_of(), or 128 + signal
  std::optional<ChildExit> failure;  // the first child that failed, if one did
  int stop_signal = 0;               // the signal that made the launcher stop everything
  bool stdin_closed = false;         // stopped because stdin reached EOF (watch_stdin)
  std::vector<size_t> stopped;       // children still running when the stop began
};

// Starts every child and waits for all of them. Throws ds::Error if a child cannot be started
// (after stopping the ones already running).
SuperviseResult supervise(const std::vector<ChildSpec>& children, const SuperviseOptions& options);

}  // namespace ds::launch
