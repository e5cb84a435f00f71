#include "ds/launch/process.h"

#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>

#include "ds/common/error.h"
#include "ds/common/strings.h"

extern char** environ;

namespace ds::launch {

UniqueFd& UniqueFd::operator=(UniqueFd&& other) noexcept {
  if (this != &other) reset(other.release());
  return *this;
}

int UniqueFd::release() {
  int fd = fd_;
  fd_ = -1;
  return fd;
}

void UniqueFd::reset(int fd) {
  // close() errors are not actionable here (the fd is gone either way); EINTR must not be retried.
  if (fd_ >= 0) ::close(fd_);
  fd_ = fd;
}

Pipe make_pipe() {
  int fds[2];
  DS_CHECK_SYS(::pipe2(fds, O_CLOEXEC), "pipe2");
  return Pipe{UniqueFd(fds[0]), UniqueFd(fds[1])};
}

namespace {

enum class FileKind { kMissing, kDirectory, kNotExecutable, kExecutable };

FileKind classify(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) return FileKind::kMissing;
  if (S_ISDIR(st.st_mode)) return FileKind::kDirectory;
  return ::access(path.c_str(), X_OK) == 0 ? FileKind::kExecutable : FileKind::kNotExecutable;
}

}  // namespace

std::string find_program(const std::string& program, const std::string& path_env) {
  if (program.empty()) throw Error("no program given to launch");
  if (program.find('/') != std::string::npos) {
    switch (classify(program)) {
      case FileKind::kExecutable:
        return program;
      case FileKind::kMissing:
        throw Error(str("program '", program, "' does not exist"));
      case FileKind::kDirectory:
        throw Error(str("program '", program, "' is a directory"));
      case FileKind::kNotExecutable:
        throw Error(str("program '", program, "' is not executable"));
    }
  }
  std::string not_executable;
  for (const std::string& dir : split(path_env, ':')) {
    std::string candidate = (dir.empty() ? std::string(".") : dir) + "/" + program;
    FileKind kind = classify(candidate);
    if (kind == FileKind::kExecutable) return candidate;
    if (kind == FileKind::kNotExecutable && not_executable.empty()) not_executable = candidate;
  }
  if (!not_executable.empty())
    throw Error(str("program '", program, "' found as '", not_executable, "' is not executable"));
  throw Error(str("program '", program, "' not found in PATH"));
}

std::string signal_name(int sig) {
  const char* abbrev = ::sigabbrev_np(sig);
  return abbrev ? std::string("SIG") + abbrev : "signal " + std::to_string(sig);
}

std::string describe_wait_status(int status) {
  if (WIFEXITED(status)) return str("exited with status ", WEXITSTATUS(status));
  if (WIFSIGNALED(status)) {
    int sig = WTERMSIG(status);
    return str("was killed by signal ", sig, " (", signal_name(sig), ")",
               WCOREDUMP(status) ? " (core dumped)" : "");
  }
  return str("ended with wait status ", status);
}

int exit_code_of(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return 1;
}

bool wait_status_failed(int status) { return !(WIFEXITED(status) && WEXITSTATUS(status) == 0); }

std::string self_exe_path() {
  char buf[PATH_MAX];
  ssize_t n = DS_CHECK_SYS(::readlink("/proc/self/exe", buf, sizeof buf - 1), "readlink /proc/self/exe");
  return std::string(buf, static_cast<size_t>(n));
}

std::vector<std::string> environ_entries() {
  std::vector<std::string> out;
  for (char** e = environ; e && *e; ++e) out.emplace_back(*e);
  return out;
}

std::vector<std::string> merge_environment(const std::vector<std::string>& base,
                                           const std::vector<EnvVar>& overrides) {
  std::vector<std::string> out;
  auto overridden = [&](const std::string& entry) {
    size_t eq = entry.find('=');
    std::string key = entry.substr(0, eq);
    for (const EnvVar& o : overrides)
      if (o.first == key) return true;
    return false;
  };
  for (const std::string& e : base)
    if (!overridden(e)) out.push_back(e);
  for (const EnvVar& o : overrides) {
    std::string entry = o.first + "=" + o.second;
    // a key given twice in overrides: the last one wins
    auto same_key = [&](const std::string& e) {
      return e.compare(0, o.first.size() + 1, o.first + "=") == 0;
    };
    out.erase(std::remove_if(out.begin(), out.end(), same_key), out.end());
    out.push_back(entry);
  }
  return out;
}

bool write_all(int fd, const std::string& data) {
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = ::write(fd, data.data() + done, data.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    done += static_cast<size_t>(n);
  }
  return true;
}

std::string plural(size_t n, const std::string& noun) { return str(n, " ", noun, n == 1 ? "" : "s"); }

}  // namespace ds::launch
