#include "support/ranks.h"

#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <thread>

namespace ds::test {

PortReservation::PortReservation() {
  fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int one = 1;
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  socklen_t len = sizeof a;
  if (fd_ < 0 || ::setsockopt(fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
      ::bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
      ::getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
    ADD_FAILURE() << "cannot reserve a free port";
    return;
  }
  port_ = ntohs(a.sin_port);
}

PortReservation::~PortReservation() {
  if (fd_ >= 0) ::close(fd_);
}

std::vector<int> run_processes(int world, const std::function<void(int, int)>& fn, RankRun run) {
  PortReservation reserved;  // bound until every rank is done: no other test can take the port
  const int port = reserved.port();
  std::vector<pid_t> pids;
  for (int r = 0; r < world; ++r) {
    pid_t pid = ::fork();
    if (pid == 0) {
      reserved.forget();
      int code = 0;
      try {
        fn(r, port);
        code = ::testing::Test::HasFailure() ? 1 : 0;
      } catch (const std::exception& e) {
        std::fprintf(stderr, "[rank %d] error: %s\n", r, e.what());
        code = 2;
      }
      std::fflush(stdout);
      std::fflush(stderr);
      ::_exit(code);
    }
    pids.push_back(pid);
  }
  std::vector<int> status(world, -1);
  auto deadline = std::chrono::steady_clock::now() + run.timeout;
  int left = world;
  while (left > 0) {
    for (int r = 0; r < world; ++r) {
      if (status[r] != -1) continue;
      int st = 0;
      if (::waitpid(pids[r], &st, WNOHANG) == pids[r]) status[r] = st, --left;
    }
    if (left > 0 && std::chrono::steady_clock::now() > deadline) {
      for (int r = 0; r < world; ++r)
        if (status[r] == -1) ::kill(pids[r], SIGKILL), ::waitpid(pids[r], &status[r], 0);
      ADD_FAILURE() << "ranks still running after " << run.timeout.count() << " s were killed";
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  for (int r = 0; r < world; ++r) EXPECT_TRUE(run.accept(r, status[r])) << "rank " << r << " of " << world << " failed (wait status " << status[r] << ")";
  return status;
}

std::vector<int> run_ranks(int world, const std::function<void(comm::Communicator&)>& fn, RankRun run) {
  return run_processes(world, [&](int rank, int port) {
    comm::GlooOptions o;
    o.rank = rank;
    o.world_size = world;
    o.master_port = port;
    o.timeout = run.comm_timeout;
    auto comm = comm::make_gloo(o);
    fn(*comm);
  }, run);
}

}  // namespace ds::test
