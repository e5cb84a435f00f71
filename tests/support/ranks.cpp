#include "support/ranks.h"

#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <thread>

namespace ds::test {

int free_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  socklen_t len = sizeof a;
  if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
    ADD_FAILURE() << "cannot find a free port";
    return 29500;
  }
  ::close(fd);
  return ntohs(a.sin_port);
}

std::vector<int> run_processes(int world, const std::function<void(int, int)>& fn, RankRun run) {
  int port = free_port();
  std::vector<pid_t> pids;
  for (int r = 0; r < world; ++r) {
    pid_t pid = ::fork();
    if (pid == 0) {
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
