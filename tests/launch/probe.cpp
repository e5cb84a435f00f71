// ds_launch_probe: a rank program for the launcher tests. Steps run in this order, each only
// when its option is given:
//   --print-env          print "RANK=.. WORLD_SIZE=.. ... NETNS=net:[inode]" on stdout
//   --rendezvous         rank 0 listens on MASTER_ADDR:MASTER_PORT, the others connect to it;
//                        prints "RANK=r CONNECTED=1" when its connection(s) went through
//   --pid-dir D          write the pid to D/pid.<RANK> (after installing signal handling)
//   --on-term-write D    on SIGTERM/SIGINT: write D/term.<RANK> and exit 0
//   --ignore-term        ignore SIGTERM and SIGINT
//   --wait-pids D N      wait (10 s at most) until D/pid.0 .. D/pid.<N-1> all exist
//   --exit R:CODE        rank R exits with CODE
//   --kill-self R:SIG    rank R kills itself with SIG
//   --partial-output     "a", pause, "b\nc", pause, "\n" on stdout; "e1\ne2" on stderr
//   --sleep S            sleep S seconds (wakes up early on --on-term-write)
// Every wait is bounded in time.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

namespace {

volatile sig_atomic_t g_terminated = 0;
void on_term(int) { g_terminated = 1; }

std::string env_or(const char* name, const char* fallback = "") {
  const char* v = std::getenv(name);
  return v ? v : fallback;
}

int rank() { return std::atoi(env_or("RANK", "-1").c_str()); }

[[noreturn]] void die(const std::string& what) {
  std::fprintf(stderr, "probe rank %d: %s: %s\n", rank(), what.c_str(), std::strerror(errno));
  std::exit(90);
}

// Written under a temporary name and renamed, so a reader never sees half a file.
void write_file(const std::string& path, const std::string& text) {
  std::string tmp = path + ".tmp";
  FILE* f = std::fopen(tmp.c_str(), "w");
  if (!f) die("open " + tmp);
  std::fputs(text.c_str(), f);
  if (std::fclose(f) != 0) die("close " + tmp);
  if (std::rename(tmp.c_str(), path.c_str()) != 0) die("rename " + tmp);
}

void print_env() {
  std::string line;
  for (const char* k : {"RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "NODE_RANK",
                        "MASTER_ADDR", "MASTER_PORT", "DS_SLOT", "DS_FAKE_HOST", "EXTRA"})
    line += std::string(line.empty() ? "" : " ") + k + "=" + env_or(k);
  char ns[128];
  ssize_t n = readlink("/proc/self/ns/net", ns, sizeof ns - 1);
  line += " NETNS=" + std::string(ns, n > 0 ? static_cast<size_t>(n) : 0);  // "net:[4026531840]"
  std::printf("%s\n", line.c_str());
  std::fflush(stdout);
}

sockaddr_in master_sockaddr() {
  sockaddr_in sa;
  std::memset(&sa, 0, sizeof sa);
  sa.sin_family = AF_INET;
  sa.sin_port = htons(static_cast<uint16_t>(std::atoi(env_or("MASTER_PORT", "0").c_str())));
  if (inet_pton(AF_INET, env_or("MASTER_ADDR").c_str(), &sa.sin_addr) != 1) {
    errno = EINVAL;
    die("MASTER_ADDR is not an IPv4 address");
  }
  return sa;
}

// Rank 0: accept WORLD_SIZE-1 peers (15 s at most), read one byte from each, answer one byte.
void serve(int world) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in sa = master_sockaddr();
  if (fd < 0 || bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0 || listen(fd, 64) != 0)
    die("listen");
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(15);
  for (int peers = 0; peers < world - 1;) {
    pollfd p{fd, POLLIN, 0};
    if (std::chrono::steady_clock::now() > deadline) die("timed out waiting for peers");
    if (poll(&p, 1, 100) <= 0) continue;
    int c = accept4(fd, nullptr, nullptr, SOCK_CLOEXEC);
    if (c < 0) die("accept");
    char b = 0;
    if (read(c, &b, 1) != 1 || write(c, "k", 1) != 1) die("peer exchange");
    close(c);
    ++peers;
  }
  close(fd);
}

// Other ranks: connect (retrying while rank 0 starts, 15 s at most) and exchange one byte.
void connect_to_master() {
  sockaddr_in sa = master_sockaddr();
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(15);
  while (true) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) die("socket");
    if (connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0) {
      char b = 0;
      if (write(fd, "r", 1) != 1 || read(fd, &b, 1) != 1 || b != 'k') die("master exchange");
      close(fd);
      return;
    }
    close(fd);
    if (std::chrono::steady_clock::now() > deadline) die("cannot connect to MASTER_ADDR:MASTER_PORT");
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

void rendezvous() {
  int world = std::atoi(env_or("WORLD_SIZE", "1").c_str());
  if (rank() == 0)
    serve(world);
  else
    connect_to_master();
  std::printf("RANK=%d CONNECTED=1\n", rank());
  std::fflush(stdout);
}

// "R:V" -> true and V when R is this rank.
bool for_me(const char* spec, int* value) {
  int r = -1, v = 0;
  if (std::sscanf(spec, "%d:%d", &r, &v) != 2) return false;
  *value = v;
  return r == rank();
}

void partial_output() {
  auto pause = [] { std::this_thread::sleep_for(std::chrono::milliseconds(60)); };
  auto out = [](int fd, const char* s) {
    if (write(fd, s, std::strlen(s)) < 0) die("write");
  };
  out(1, "a");
  pause();
  out(1, "b\nc");
  out(2, "e1\ne");
  pause();
  out(1, "\n");
  out(2, "2");
}

void wait_for_pid_files(const std::string& dir, int n) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  for (int r = 0; r < n && std::chrono::steady_clock::now() < deadline;) {
    if (access((dir + "/pid." + std::to_string(r)).c_str(), F_OK) == 0)
      ++r;
    else
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

}  // namespace

int main(int argc, char** argv) {
  std::string term_dir;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    const char* next = i + 1 < argc ? argv[i + 1] : "";
    int v = 0;
    if (a == "--print-env") {
      print_env();
    } else if (a == "--rendezvous") {
      rendezvous();
    } else if (a == "--on-term-write") {
      term_dir = next, ++i;
      signal(SIGTERM, on_term);
      signal(SIGINT, on_term);
    } else if (a == "--ignore-term") {
      signal(SIGTERM, SIG_IGN);
      signal(SIGINT, SIG_IGN);
    } else if (a == "--pid-dir") {
      write_file(std::string(next) + "/pid." + std::to_string(rank()), std::to_string(getpid()));
      ++i;
    } else if (a == "--wait-pids") {
      wait_for_pid_files(next, i + 2 < argc ? std::atoi(argv[i + 2]) : 0);
      i += 2;
    } else if (a == "--exit") {
      if (for_me(next, &v)) std::exit(v);
      ++i;
    } else if (a == "--kill-self") {
      if (for_me(next, &v)) kill(getpid(), v);
      ++i;
    } else if (a == "--partial-output") {
      partial_output();
    } else if (a == "--sleep") {
      auto deadline = std::chrono::steady_clock::now() +
                      std::chrono::milliseconds(static_cast<long>(std::atof(next) * 1000));
      ++i;
      while (!g_terminated && std::chrono::steady_clock::now() < deadline)
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    } else {
      std::fprintf(stderr, "probe: unknown argument %s\n", a.c_str());
      return 91;
    }
    if (g_terminated) break;
  }
  if (g_terminated && !term_dir.empty()) write_file(term_dir + "/term." + std::to_string(rank()), "term");
  return 0;
}
