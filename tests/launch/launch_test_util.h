// Helpers for the launcher tests that run the real `ds-launch` binary: start it with pipes,
// wait with a time limit, temporary directories, and checks on processes by pid.
#pragma once

#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "support/files.h"

extern char** environ;

namespace ds_test {

using ds::test::TempDir;

using Clock = std::chrono::steady_clock;

inline std::string ds_launch_bin() {
  const char* dir = std::getenv("DS_BIN_DIR");
  return dir ? std::string(dir) + "/ds-launch" : std::string(DS_LAUNCH_BIN);
}
inline std::string probe_bin() { return DS_LAUNCH_PROBE; }


struct RunOutput {
  int status = -1;  // waitpid status
  bool timed_out = false;
  std::string out, err;
  double seconds = 0;
  int exit_code() const { return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status); }
};

// A running ds-launch (or any program) with stdout/stderr on pipes. Killed if still running when
// destroyed.
class Spawned {
 public:
  explicit Spawned(const std::vector<std::string>& argv) : start_(Clock::now()) {
    int out[2], err[2];
    if (::pipe2(out, O_CLOEXEC) != 0 || ::pipe2(err, O_CLOEXEC) != 0) throw std::runtime_error("pipe2");
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, out[1], 1);
    posix_spawn_file_actions_adddup2(&fa, err[1], 2);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    int rc = posix_spawn(&pid_, args[0], &fa, nullptr, args.data(), environ);
    posix_spawn_file_actions_destroy(&fa);
    ::close(out[1]);
    ::close(err[1]);
    out_fd_ = out[0];
    err_fd_ = err[0];
    if (rc != 0) throw std::runtime_error("posix_spawn " + argv[0] + ": " + std::strerror(rc));
  }
  ~Spawned() {
    if (pid_ > 0 && !reaped_) {
      ::kill(pid_, SIGKILL);
      int st;
      ::waitpid(pid_, &st, 0);
    }
    if (out_fd_ >= 0) ::close(out_fd_);
    if (err_fd_ >= 0) ::close(err_fd_);
  }
  Spawned(const Spawned&) = delete;
  Spawned& operator=(const Spawned&) = delete;

  pid_t pid() const { return pid_; }

  // Reads the output until both pipes close and waits for the exit, `timeout_s` in all;
  // on timeout the process is killed and timed_out is set.
  RunOutput wait(double timeout_s) {
    RunOutput r;
    auto deadline = Clock::now() + std::chrono::milliseconds(static_cast<long>(timeout_s * 1000));
    while ((out_fd_ >= 0 || err_fd_ >= 0) && Clock::now() < deadline) {
      pollfd fds[2] = {{out_fd_, POLLIN, 0}, {err_fd_, POLLIN, 0}};
      if (::poll(fds, 2, 50) <= 0) continue;
      read_some(fds[0], out_fd_, r.out);
      read_some(fds[1], err_fd_, r.err);
    }
    while (!reaped_) {
      int rc = ::waitpid(pid_, &r.status, WNOHANG);
      if (rc == pid_) {
        reaped_ = true;
        break;
      }
      if (Clock::now() >= deadline) {
        r.timed_out = true;
        ::kill(pid_, SIGKILL);
        ::waitpid(pid_, &r.status, 0);
        reaped_ = true;
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    r.seconds = std::chrono::duration<double>(Clock::now() - start_).count();
    return r;
  }

 private:
  static void read_some(const pollfd& p, int& fd, std::string& into) {
    if (fd < 0 || !p.revents) return;
    char buf[4096];
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n > 0) {
      into.append(buf, static_cast<size_t>(n));
    } else if (n == 0 || errno != EINTR) {
      ::close(fd);
      fd = -1;
    }
  }

  pid_t pid_ = -1;
  bool reaped_ = false;
  int out_fd_ = -1, err_fd_ = -1;
  Clock::time_point start_;
};

inline std::vector<std::string> launch_argv(std::vector<std::string> args) {
  args.insert(args.begin(), ds_launch_bin());
  return args;
}

inline RunOutput run_launch(const std::vector<std::string>& args, double timeout_s = 20) {
  Spawned p(launch_argv(args));
  return p.wait(timeout_s);
}

inline std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> out;
  std::istringstream in(text);
  for (std::string l; std::getline(in, l);) out.push_back(l);
  return out;
}

inline bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

inline std::string read_file(const std::string& path) {
  std::ifstream in(path);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

// True when `pid` no longer exists (or is a zombie nobody has reaped yet).
inline bool process_gone(pid_t pid) {
  if (::kill(pid, 0) != 0) return errno == ESRCH;
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string all((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
  size_t close_paren = all.rfind(')');
  return close_paren != std::string::npos && close_paren + 2 < all.size() && all[close_paren + 2] == 'Z';
}

// Polls `pred` every 20 ms for at most `timeout_s`.
template <typename Pred>
bool wait_until(Pred pred, double timeout_s) {
  auto deadline = Clock::now() + std::chrono::milliseconds(static_cast<long>(timeout_s * 1000));
  while (Clock::now() < deadline) {
    if (pred()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return pred();
}

// Reads the pids the ranks wrote with `--pid-dir`, waiting up to `timeout_s` for all of them.
inline std::vector<pid_t> wait_for_pids(const TempDir& dir, int n, double timeout_s) {
  std::vector<pid_t> pids;
  wait_until(
      [&] {
        pids.clear();
        for (int r = 0; r < n; ++r) {
          std::string t = read_file(dir.file("pid." + std::to_string(r)));
          if (t.empty()) return false;
          pids.push_back(static_cast<pid_t>(std::stol(t)));
        }
        return true;
      },
      timeout_s);
  return pids;
}

// "[rank2]: RANK=2 WORLD_SIZE=4 ..." -> {"RANK": "2", ...}; the prefix goes in "_prefix".
inline std::map<std::string, std::string> parse_env_line(const std::string& line) {
  std::map<std::string, std::string> kv;
  std::istringstream in(line);
  std::string word;
  while (in >> word) {
    size_t eq = word.find('=');
    if (eq == std::string::npos)
      kv["_prefix"] += word;
    else
      kv[word.substr(0, eq)] = word.substr(eq + 1);
  }
  return kv;
}

inline std::vector<std::map<std::string, std::string>> env_lines(const std::string& out) {
  std::vector<std::map<std::string, std::string>> v;
  for (const auto& l : lines_of(out))
    if (l.find(" RANK=") != std::string::npos && l.find("WORLD_SIZE=") != std::string::npos)
      v.push_back(parse_env_line(l));
  std::sort(v.begin(), v.end(), [](auto& a, auto& b) { return std::stoi(a["RANK"]) < std::stoi(b["RANK"]); });
  return v;
}

inline std::vector<std::string> error_lines(const std::string& err) {
  std::vector<std::string> v;
  for (const auto& l : lines_of(err))
    if (l.rfind("ds-launch: error: ", 0) == 0) v.push_back(l);
  return v;
}

inline void expect_all_gone(const std::vector<pid_t>& pids) {
  for (pid_t p : pids)
    EXPECT_TRUE(wait_until([&] { return process_gone(p); }, 2.0)) << "rank pid " << p << " survived";
}

inline std::string diag(const RunOutput& r) {
  return "exit " + std::to_string(r.exit_code()) + (r.timed_out ? " (timed out)" : "") + "\nstdout:\n" +
         r.out + "\nstderr:\n" + r.err;
}

}  // namespace ds_test
