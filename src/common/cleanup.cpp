#include "ds/common/cleanup.h"

#include <dirent.h>
#include <signal.h>
#include <sys/types.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <mutex>

namespace ds {

namespace {

// Fixed storage the signal handler can read without allocating: each slot holds up to
// kFiles file paths and a directory, and is "ready" only once fully written.
constexpr int kSlots = 64;
constexpr int kFiles = 3;
constexpr size_t kPathBytes = 1024;

struct Slot {
  std::atomic<int> state{0};  // 0 free, 1 being written or removed, 2 ready
  pid_t owner = 0;            // a forked child must not remove its parent's files
  char files[kFiles][kPathBytes];
  char dir[kPathBytes];
};
Slot g_slots[kSlots];
std::mutex g_register_mu;
bool g_installed = false;

const int kSignals[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGABRT};

// Async-signal-safe: unlink, rmdir, getpid.
void remove_slot(Slot& s) {
  for (auto& f : s.files)
    if (f[0]) ::unlink(f);
  if (s.dir[0]) ::rmdir(s.dir);
}

void remove_all_ready() {
  const pid_t me = ::getpid();
  for (Slot& s : g_slots) {
    int ready = 2;
    if (s.owner == me && s.state.compare_exchange_strong(ready, 1)) {
      remove_slot(s);
      s.state.store(0);
    }
  }
}

void on_signal(int sig) {
  const int saved = errno;
  remove_all_ready();
  ::signal(sig, SIG_DFL);
  ::raise(sig);  // delivered when the handler returns: the default action, with this signal's status
  errno = saved;
}

void install_once() {
  if (g_installed) return;
  g_installed = true;
  for (int sig : kSignals) {
    struct sigaction current {};
    if (::sigaction(sig, nullptr, &current) != 0 || current.sa_handler != SIG_DFL) continue;  // the program's own
    struct sigaction act {};
    act.sa_handler = on_signal;
    sigemptyset(&act.sa_mask);
    ::sigaction(sig, &act, nullptr);
  }
  std::atexit(remove_all_ready);
}

bool copy_path(char* dst, const std::string& src) {
  if (src.size() >= kPathBytes) return false;
  std::memcpy(dst, src.c_str(), src.size() + 1);
  return true;
}

bool pid_alive(long pid) { return pid > 0 && (::kill(pid_t(pid), 0) == 0 || errno == EPERM); }

std::string host_name() {
  char buf[256] = {};
  if (::gethostname(buf, sizeof buf - 1) != 0 || !buf[0]) return "localhost";
  for (char* c = buf; *c; ++c)
    if (*c == '@' || *c == '/') *c = '_';
  return buf;
}

// "...@<host>@<pid>..." -> host and pid; false when the name has no owner tag.
bool parse_owner(const std::string& name, std::string& host, long& pid) {
  const size_t a = name.find('@');
  if (a == std::string::npos) return false;
  const size_t b = name.find('@', a + 1);
  if (b == std::string::npos) return false;
  host = name.substr(a + 1, b - a - 1);
  char* end = nullptr;
  pid = std::strtol(name.c_str() + b + 1, &end, 10);
  return end != name.c_str() + b + 1 && pid > 0;
}

template <typename F>
void for_each_owned(const std::string& dir, const NameMatch& match, F&& f) {
  DIR* d = ::opendir(dir.c_str());
  if (!d) return;
  while (dirent* e = ::readdir(d)) {
    const std::string name = e->d_name;
    std::string host;
    long pid = 0;
    if (match(name) && parse_owner(name, host, pid)) f(dir + "/" + name, host, pid);
  }
  ::closedir(d);
}

}  // namespace

CleanupScope::CleanupScope(std::vector<std::string> files, std::string dir) {
  std::lock_guard<std::mutex> lock(g_register_mu);
  install_once();
  for (int i = 0; i < kSlots; ++i) {
    int free = 0;
    if (!g_slots[i].state.compare_exchange_strong(free, 1)) continue;
    Slot& s = g_slots[i];
    bool ok = files.size() <= size_t(kFiles) && copy_path(s.dir, dir);
    for (int k = 0; k < kFiles; ++k) ok = ok && copy_path(s.files[k], k < int(files.size()) ? files[size_t(k)] : "");
    if (!ok) {  // paths too long: the owner still removes them; only a signal would miss them
      s.state.store(0);
      return;
    }
    s.owner = ::getpid();
    s.state.store(2);
    slot_ = i;
    return;
  }
}

CleanupScope::~CleanupScope() {
  if (slot_ < 0) return;
  Slot& s = g_slots[slot_];
  int ready = 2;
  if (s.state.compare_exchange_strong(ready, 1)) {
    remove_slot(s);
    s.state.store(0);
  }
}

void CleanupScope::release() {
  if (slot_ < 0) return;
  int ready = 2;
  if (g_slots[slot_].state.compare_exchange_strong(ready, 1)) g_slots[slot_].state.store(0);
  slot_ = -1;
}

CleanupScope::CleanupScope(CleanupScope&& other) noexcept : slot_(other.slot_) { other.slot_ = -1; }

CleanupScope& CleanupScope::operator=(CleanupScope&& other) noexcept {
  if (this != &other) {
    this->~CleanupScope();
    slot_ = other.slot_;
    other.slot_ = -1;
  }
  return *this;
}

std::string owner_tag() { return "@" + host_name() + "@" + std::to_string(long(::getpid())); }

std::vector<StaleEntry> find_stale(const std::string& dir, const NameMatch& match) {
  std::vector<StaleEntry> out;
  const std::string here = host_name();
  for_each_owned(dir, match, [&](const std::string& path, const std::string& host, long pid) {
    if (host == here && !pid_alive(pid)) out.push_back({path, pid});
  });
  return out;
}

std::vector<std::string> find_foreign(const std::string& dir, const NameMatch& match) {
  std::vector<std::string> out;
  const std::string here = host_name();
  for_each_owned(dir, match, [&](const std::string& path, const std::string& host, long) {
    if (host != here) out.push_back(path);
  });
  return out;
}

}  // namespace ds
