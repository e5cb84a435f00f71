// Files a process creates for its own use (ZeRO-Infinity swap files, checkpoint temp files)
// and removes on every exit it controls: its owner's destructor, a normal exit, and the
// signals that end a run — SIGINT (Ctrl-C), SIGTERM (the launcher stopping the ranks after a
// peer failed), SIGHUP, SIGQUIT, and SIGABRT (a library's abort()). The signal handler only
// unlinks the registered files and removes their (empty) directories — async-signal-safe
// calls — then re-raises the signal with its default action, so the exit status still names
// it. A handler the program installed itself is left in place (and then it is the program's
// to clean up). SIGKILL cannot be caught: find_stale() lists what killed processes left.
//
//   ds::CleanupScope swap({dir + "/optimizer_states.swp"}, dir);   // registered
//   ...                                                            // ~CleanupScope: removed
#pragma once

#include <functional>
#include <string>
#include <vector>

namespace ds {

class CleanupScope {
 public:
  CleanupScope() = default;
  // Registers `files` and then `dir` (may be empty: no directory) for removal.
  CleanupScope(std::vector<std::string> files, std::string dir);
  ~CleanupScope();  // removes them now
  CleanupScope(CleanupScope&& other) noexcept;
  CleanupScope& operator=(CleanupScope&& other) noexcept;
  CleanupScope(const CleanupScope&) = delete;
  CleanupScope& operator=(const CleanupScope&) = delete;
  // Forget them without removing (e.g. a temp file that was renamed into place).
  void release();

 private:
  int slot_ = -1;
};

// What this process puts into the names of its own files, "@<host>@<pid>", so that a later
// process can tell whether the owner is gone (same host, no such process).
std::string owner_tag();

// Entries of `dir` for which `match(name)` holds and whose name carries an owner tag of this
// host whose process no longer exists: leftovers of killed runs.
struct StaleEntry {
  std::string path;
  long pid = 0;
};
using NameMatch = std::function<bool(const std::string& name)>;
std::vector<StaleEntry> find_stale(const std::string& dir, const NameMatch& match);
// Entries whose owner tag names another host (their liveness cannot be checked from here).
std::vector<std::string> find_foreign(const std::string& dir, const NameMatch& match);

}  // namespace ds
