// Small POSIX helpers for the launcher: owned file descriptors, program lookup, and the words
// for how a process ended.
//
//   ds::launch::UniqueFd fd(::open(path, O_RDONLY | O_CLOEXEC));   // closed when it goes away
//   std::string exe = ds::launch::find_program("python3", getenv("PATH"));  // or throws
//   ds::launch::describe_wait_status(status);   // "was killed by signal 9 (SIGKILL)"
#pragma once

#include <string>
#include <vector>

#include "ds/launch/ranks.h"

namespace ds::launch {

// An owned file descriptor (-1 = none), closed on destruction.
class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  UniqueFd(UniqueFd&& other) noexcept : fd_(other.release()) {}
  UniqueFd& operator=(UniqueFd&& other) noexcept;
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  ~UniqueFd() { reset(); }

  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  int release();
  void reset(int fd = -1);

 private:
  int fd_ = -1;
};

// A pipe with both ends close-on-exec.
struct Pipe {
  UniqueFd read;
  UniqueFd write;
};
Pipe make_pipe();

// Resolves `program` like execvp would: a name with '/' is checked as is, others are searched
// in `path_env` (":"-separated). Throws ds::Error when it does not exist, is a directory, or is
// not executable. Returns the path to execute.
std::string find_program(const std::string& program, const std::string& path_env);

// "SIGKILL" for 9, "signal 64" for ones without a name.
std::string signal_name(int sig);

// How a process ended, from a waitpid() status: "exited with status 3",
// "was killed by signal 9 (SIGKILL)".
std::string describe_wait_status(int status);

// The exit code that reports `status` to a shell: the exit status, or 128 + signal.
int exit_code_of(int status);

// True when `status` is not a clean exit with status 0.
bool wait_status_failed(int status);

// The path of the running executable (/proc/self/exe).
std::string self_exe_path();

// The current environment as "KEY=VALUE" strings.
std::vector<std::string> environ_entries();

// `base` ("KEY=VALUE" strings) with `overrides` replacing or adding variables.
std::vector<std::string> merge_environment(const std::vector<std::string>& base,
                                           const std::vector<EnvVar>& overrides);

// Writes all of `data` to `fd`, retrying on EINTR and short writes. Returns false on error
// (errno set), e.g. EPIPE when the reader is gone.
bool write_all(int fd, const std::string& data);

// "1 rank", "3 ranks".
std::string plural(size_t n, const std::string& noun);

}  // namespace ds::launch
