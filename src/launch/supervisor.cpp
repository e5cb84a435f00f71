#include "ds/launch/supervisor.h"

#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>

#include "ds/common/error.h"
#include "ds/common/strings.h"
#include "ds/launch/output.h"
#include "ds/launch/process.h"

namespace ds::launch {

namespace {

using Clock = std::chrono::steady_clock;
constexpr const char* kErrorLinePrefix = "ds-launch: error: ";

// While alive: SIGINT, SIGTERM, SIGHUP and SIGCHLD are blocked and read from a signalfd (no
// async handlers), SIGINT/SIGTERM are not ignored even if our parent made them so (a background
// job of a non-interactive shell), and SIGPIPE is ignored so a closed stdout cannot kill us.
class SignalCatcher {
 public:
  SignalCatcher() {
    sigemptyset(&set_);
    for (int s : {SIGINT, SIGTERM, SIGHUP, SIGCHLD}) sigaddset(&set_, s);
    struct sigaction dfl;
    std::memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    struct sigaction ign = dfl;
    ign.sa_handler = SIG_IGN;
    DS_CHECK_SYS(::sigaction(SIGINT, &dfl, &old_int_), "sigaction SIGINT");
    DS_CHECK_SYS(::sigaction(SIGTERM, &dfl, &old_term_), "sigaction SIGTERM");
    DS_CHECK_SYS(::sigaction(SIGPIPE, &ign, &old_pipe_), "sigaction SIGPIPE");
    int rc = ::pthread_sigmask(SIG_BLOCK, &set_, &old_mask_);
    DS_CHECK(rc == 0, "pthread_sigmask: ", std::strerror(rc));
    fd_.reset(::signalfd(-1, &set_, SFD_CLOEXEC | SFD_NONBLOCK));
    if (!fd_.valid()) {
      int err = errno;
      restore();
      detail::sys_failed(__FILE__, __LINE__, err, "signalfd");
    }
  }
  ~SignalCatcher() { restore(); }
  SignalCatcher(const SignalCatcher&) = delete;
  SignalCatcher& operator=(const SignalCatcher&) = delete;

  int fd() const { return fd_.get(); }

  // The signals that arrived since the last call.
  std::vector<int> take() {
    std::vector<int> out;
    for (int i = 0; i < 1024; ++i) {  // bounded: a burst of signals cannot starve the loop
      signalfd_siginfo info;
      ssize_t n = ::read(fd_.get(), &info, sizeof info);
      if (n < 0 && errno == EINTR) continue;
      if (n != static_cast<ssize_t>(sizeof info)) break;  // EAGAIN: nothing more
      out.push_back(static_cast<int>(info.ssi_signo));
    }
    return out;
  }

 private:
  void restore() {
    ::pthread_sigmask(SIG_SETMASK, &old_mask_, nullptr);
    ::sigaction(SIGPIPE, &old_pipe_, nullptr);
    ::sigaction(SIGTERM, &old_term_, nullptr);
    ::sigaction(SIGINT, &old_int_, nullptr);
  }

  sigset_t set_, old_mask_;
  struct sigaction old_int_, old_term_, old_pipe_;
  UniqueFd fd_;
};

// Everything a forked child needs, prepared before fork() so the child only makes
// async-signal-safe calls.
struct ExecArgs {
  pid_t parent = -1;
  const char* path = nullptr;
  std::vector<char*> argv, envp;
  int stdin_fd = -1, stdout_fd = -1, stderr_fd = -1;  // -1: inherit
  int error_fd = -1;                                  // errno goes here if execve fails
};

// Makes `from` the child's descriptor `to` (kept across exec). Returns 0 or an errno.
int move_fd(int from, int to) {
  if (from < 0) return 0;
  int rc = from == to ? ::fcntl(to, F_SETFD, 0) : ::dup2(from, to);
  return rc < 0 ? errno : 0;
}

[[noreturn]] void exec_child(const ExecArgs& a) {
  ::setpgid(0, 0);
  int err = 0;
  if (::prctl(PR_SET_PDEATHSIG, SIGKILL) != 0) err = errno;
  if (::getppid() != a.parent) ::_exit(127);  // the launcher died before prctl took effect
  if (err == 0) err = move_fd(a.stdin_fd, 0);
  if (err == 0) err = move_fd(a.stdout_fd, 1);
  if (err == 0) err = move_fd(a.stderr_fd, 2);
  struct sigaction dfl;
  std::memset(&dfl, 0, sizeof dfl);
  dfl.sa_handler = SIG_DFL;
  for (int s : {SIGINT, SIGTERM, SIGPIPE, SIGCHLD}) ::sigaction(s, &dfl, nullptr);
  sigset_t none;
  sigemptyset(&none);
  ::sigprocmask(SIG_SETMASK, &none, nullptr);
  if (err == 0) {
    ::execve(a.path, a.argv.data(), a.envp.data());
    err = errno;
  }
  ssize_t ignored = ::write(a.error_fd, &err, sizeof err);
  (void)ignored;
  ::_exit(127);
}

// 0 once the child's execve succeeded (the close-on-exec pipe reads end-of-file), else the
// errno the child sent back.
int read_exec_errno(int fd) {
  while (true) {
    int child_errno = 0;
    ssize_t n = ::read(fd, &child_errno, sizeof child_errno);
    if (n < 0 && errno == EINTR) continue;
    return n == static_cast<ssize_t>(sizeof child_errno) ? child_errno : 0;
  }
}

std::vector<char*> c_strings(std::vector<std::string>& v) {
  std::vector<char*> out;
  for (auto& s : v) out.push_back(s.data());
  out.push_back(nullptr);
  return out;
}

struct Stream {
  UniqueFd fd;
  LineSplitter splitter;
  int dest = -1;
};

struct Child {
  const ChildSpec* spec = nullptr;
  pid_t pid = -1;
  bool running = false;
  int status = 0;
  UniqueFd stdin_w;
  Stream out, err;
  std::string error_line;
  bool stop_reported = false;  // it is stopped (SIGSTOP, SIGTSTP) and the user was told
};

class Supervisor {
 public:
  Supervisor(const std::vector<ChildSpec>& specs, const SuperviseOptions& opts) : opts_(opts) {
    children_.resize(specs.size());
    for (size_t i = 0; i < specs.size(); ++i) children_[i].spec = &specs[i];
  }
  ~Supervisor() { kill_all_now(); }
  Supervisor(const Supervisor&) = delete;
  Supervisor& operator=(const Supervisor&) = delete;

  SuperviseResult run() {
    stdin_open_ = opts_.watch_stdin;
    for (Child& c : children_) start(c);
    loop();
    for (Child& c : children_) {
      if (c.out.fd.valid()) drain_rest(c, c.out);
      if (c.err.fd.valid()) drain_rest(c, c.err);
    }
    if (result_.failure) {
      result_.failure->error_line = children_[result_.failure->index].error_line;
      result_.exit_code = exit_code_of(result_.failure->wait_status);
    } else if (result_.stop_signal) {
      result_.exit_code = 128 + result_.stop_signal;
    } else if (result_.stdin_closed) {
      result_.exit_code = 1;
    }
    return result_;
  }

 private:
  void start(Child& c);
  void loop();
  int poll_timeout_ms() const;
  void handle_signals();
  void handle_stdin();
  void handle_stream(Child& c, Stream& s);
  void drain_rest(Child& c, Stream& s);
  void emit(Child& c, Stream& s, std::vector<std::string> lines);
  void reap();
  void on_exit(size_t index, int status);
  void begin_stop(int sig);
  void signal_running(int sig);
  void kill_all_now();

  bool all_exited() const {
    return std::none_of(children_.begin(), children_.end(), [](const Child& c) { return c.running; });
  }
  bool any_stream_open() const {
    return std::any_of(children_.begin(), children_.end(),
                       [](const Child& c) { return c.out.fd.valid() || c.err.fd.valid(); });
  }

  SignalCatcher signals_;  // first member: restored last, after the children are gone
  SuperviseOptions opts_;
  std::vector<Child> children_;
  SuperviseResult result_;
  bool stopping_ = false;
  bool stdin_open_ = false;
  bool out_broken_ = false, err_broken_ = false;  // our stdout/stderr reader went away
  std::optional<Clock::time_point> kill_deadline_, drain_deadline_;
};

void Supervisor::start(Child& c) {
  const ChildSpec& spec = *c.spec;
  DS_CHECK(!spec.argv.empty() && !spec.path.empty(), "child '", spec.label, "' has no program");
  std::vector<std::string> env = merge_environment(environ_entries(), spec.env);
  std::vector<std::string> argv = spec.argv;
  ExecArgs a;
  a.parent = ::getpid();
  a.path = spec.path.c_str();
  a.argv = c_strings(argv);
  a.envp = c_strings(env);
  Pipe exec_err = make_pipe();
  a.error_fd = exec_err.write.get();
  UniqueFd null_in;
  Pipe in, out, err;
  if (spec.stdin_mode == StdinMode::kNull) {
    null_in.reset(DS_CHECK_SYS(::open("/dev/null", O_RDONLY | O_CLOEXEC), "opening /dev/null"));
    a.stdin_fd = null_in.get();
  } else if (spec.stdin_mode == StdinMode::kPipe) {
    in = make_pipe();
    a.stdin_fd = in.read.get();
  }
  if (spec.capture_output) {
    out = make_pipe();
    err = make_pipe();
    a.stdout_fd = out.write.get();
    a.stderr_fd = err.write.get();
  }
  pid_t pid = DS_CHECK_SYS(::fork(), "fork for ", spec.label);
  if (pid == 0) exec_child(a);
  c.pid = pid;
  c.running = true;
  // Also from this side, so that signalling the group cannot race with the child's setpgid.
  if (::setpgid(pid, pid) != 0 && errno != EACCES && errno != ESRCH)
    detail::sys_failed(__FILE__, __LINE__, errno, str("setpgid for ", spec.label));
  exec_err.write.reset();
  if (int child_errno = read_exec_errno(exec_err.read.get()); child_errno != 0) {
    int status = 0;
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    c.running = false;
    throw Error(str("cannot start ", spec.label, ": ", spec.path, ": ", std::strerror(child_errno)));
  }
  c.stdin_w = std::move(in.write);
  c.out.fd = std::move(out.read);
  c.out.dest = opts_.out_fd;
  c.err.fd = std::move(err.read);
  c.err.dest = opts_.err_fd;
}

int Supervisor::poll_timeout_ms() const {
  std::optional<Clock::time_point> next;
  for (const auto& d : {kill_deadline_, drain_deadline_})
    if (d && (!next || *d < *next)) next = d;
  if (!next) return -1;
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(*next - Clock::now()).count();
  return static_cast<int>(std::clamp<long long>(ms + 1, 0, 60'000));
}

void Supervisor::loop() {
  while (true) {
    reap();
    Clock::time_point now = Clock::now();
    if (kill_deadline_ && now >= *kill_deadline_) {
      signal_running(SIGKILL);
      kill_deadline_.reset();
    }
    if (all_exited()) {
      if (!any_stream_open()) break;
      if (!drain_deadline_)
        drain_deadline_ = now + std::chrono::milliseconds(static_cast<long>(opts_.drain_timeout_s * 1000));
      if (now >= *drain_deadline_) break;
    }
    std::vector<pollfd> fds = {{signals_.fd(), POLLIN, 0}};
    if (stdin_open_) fds.push_back({0, POLLIN, 0});
    std::vector<std::pair<Child*, Stream*>> owners;
    for (Child& c : children_)
      for (Stream* s : {&c.out, &c.err})
        if (s->fd.valid()) fds.push_back({s->fd.get(), POLLIN, 0}), owners.emplace_back(&c, s);
    int rc = ::poll(fds.data(), fds.size(), poll_timeout_ms());
    if (rc < 0 && errno == EINTR) continue;
    DS_CHECK_SYS(rc, "poll");
    size_t k = 0;
    if (fds[k++].revents) handle_signals();
    if (stdin_open_ && fds[k++].revents) handle_stdin();
    for (size_t j = 0; j < owners.size(); ++j, ++k)
      if (fds[k].revents) handle_stream(*owners[j].first, *owners[j].second);
  }
}

void Supervisor::handle_signals() {
  for (int sig : signals_.take()) {
    if (sig == SIGCHLD) continue;  // reap() runs at the top of every loop
    if (!stopping_) {
      result_.stop_signal = sig;
      begin_stop(sig);
    } else if (sig == SIGINT || sig == SIGTERM) {
      signal_running(SIGKILL);  // asked twice: no more grace
      kill_deadline_.reset();
    }
  }
}

void Supervisor::handle_stdin() {
  char buf[4096];
  ssize_t n = ::read(0, buf, sizeof buf);
  if (n > 0 || (n < 0 && (errno == EINTR || errno == EAGAIN))) return;  // data is ignored
  stdin_open_ = false;
  if (!stopping_) {
    result_.stdin_closed = true;
    begin_stop(SIGTERM);
  }
}

void Supervisor::handle_stream(Child& c, Stream& s) {
  char buf[64 * 1024];
  ssize_t n = ::read(s.fd.get(), buf, sizeof buf);
  if (n < 0 && (errno == EINTR || errno == EAGAIN)) return;
  if (n > 0) {
    emit(c, s, s.splitter.feed(std::string_view(buf, static_cast<size_t>(n))));
    return;
  }
  if (auto rest = s.splitter.finish()) emit(c, s, {*rest});
  s.fd.reset();
}

// After the drain timeout: whatever is already in the pipe, then close it.
void Supervisor::drain_rest(Child& c, Stream& s) {
  int flags = ::fcntl(s.fd.get(), F_GETFL);
  if (flags >= 0) ::fcntl(s.fd.get(), F_SETFL, flags | O_NONBLOCK);
  for (int i = 0; i < 64 && s.fd.valid(); ++i) {
    char buf[64 * 1024];
    ssize_t n = ::read(s.fd.get(), buf, sizeof buf);
    if (n <= 0) break;
    emit(c, s, s.splitter.feed(std::string_view(buf, static_cast<size_t>(n))));
  }
  if (auto rest = s.splitter.finish()) emit(c, s, {*rest});
  s.fd.reset();
}

void Supervisor::emit(Child& c, Stream& s, std::vector<std::string> lines) {
  if (c.spec->capture_errors && &s == &c.err) {
    auto is_error = [](const std::string& l) { return starts_with(l, kErrorLinePrefix); };
    for (const auto& l : lines)
      if (is_error(l)) c.error_line = l;
    lines.erase(std::remove_if(lines.begin(), lines.end(), is_error), lines.end());
  }
  if (lines.empty()) return;
  bool& broken = s.dest == opts_.err_fd ? err_broken_ : out_broken_;
  if (!broken && !write_all(s.dest, prefix_lines(c.spec->output_prefix, lines))) broken = true;
}

void Supervisor::reap() {
  for (size_t i = 0; i < children_.size(); ++i) {
    Child& c = children_[i];
    if (!c.running) continue;
    siginfo_t info;
    std::memset(&info, 0, sizeof info);
    // A stopped rank does not die: its peers block in their next collective until the
    // communication timeout. Say so now, not minutes later.
    if (::waitid(P_PID, static_cast<id_t>(c.pid), &info, WSTOPPED | WCONTINUED | WNOHANG | WNOWAIT) == 0 &&
        info.si_pid != 0) {
      if (info.si_code == CLD_STOPPED && !c.stop_reported) {
        const std::string line =
            str("ds-launch: warning: ", c.spec->label, " (pid ", c.pid, ") was stopped by ", signal_name(info.si_status),
                "; the other ranks wait for it and fail after DS_COMM_TIMEOUT (300 s unless set), unless it "
                "continues (kill -CONT ", c.pid, ")\n");
        write_all(opts_.err_fd, line);
        c.stop_reported = true;
      } else if (info.si_code == CLD_CONTINUED) {
        c.stop_reported = false;
      }
      std::memset(&info, 0, sizeof info);
    }
    // WNOWAIT: the zombie keeps the process group id reserved while we clear the group out.
    int rc = ::waitid(P_PID, static_cast<id_t>(c.pid), &info, WEXITED | WNOHANG | WNOWAIT);
    if (rc < 0 && errno == EINTR) continue;
    DS_CHECK_SYS(rc, "waitid for ", c.spec->label);
    if (info.si_pid == 0) continue;  // still running
    ::kill(-c.pid, SIGKILL);         // leftovers of its group, if any (ESRCH otherwise)
    int status = 0;
    while (::waitpid(c.pid, &status, 0) < 0)
      DS_CHECK(errno == EINTR, "waitpid for ", c.spec->label, ": ", std::strerror(errno));
    on_exit(i, status);
  }
}

void Supervisor::on_exit(size_t index, int status) {
  Child& c = children_[index];
  c.running = false;
  c.status = status;
  if (!stopping_ && wait_status_failed(status)) {
    result_.failure = ChildExit{index, c.pid, status, ""};
    begin_stop(SIGTERM);
  }
}

void Supervisor::begin_stop(int sig) {
  stopping_ = true;
  for (size_t i = 0; i < children_.size(); ++i)
    if (children_[i].running) result_.stopped.push_back(i);
  signal_running(sig);
  for (Child& c : children_) c.stdin_w.reset();  // remote shells: end-of-file on the other side
  kill_deadline_ = Clock::now() + std::chrono::milliseconds(static_cast<long>(opts_.kill_timeout_s * 1000));
}

void Supervisor::signal_running(int sig) {
  for (Child& c : children_) {
    if (!c.running) continue;
    if (::kill(-c.pid, sig) != 0 && errno == ESRCH) ::kill(c.pid, sig);
  }
}

void Supervisor::kill_all_now() {
  for (Child& c : children_) {
    if (!c.running) continue;
    ::kill(-c.pid, SIGKILL);
    ::kill(c.pid, SIGKILL);
    int status;
    while (::waitpid(c.pid, &status, 0) < 0 && errno == EINTR) {
    }
    c.running = false;
  }
}

}  // namespace

SuperviseResult supervise(const std::vector<ChildSpec>& children, const SuperviseOptions& options) {
  DS_CHECK(!children.empty(), "nothing to launch");
  DS_CHECK(options.kill_timeout_s >= 0 && options.drain_timeout_s >= 0, "negative timeout");
  Supervisor supervisor(children, options);
  return supervisor.run();
}

}  // namespace ds::launch
