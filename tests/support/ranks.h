// Multi-rank tests as real processes: run_ranks(world, fn) forks `world` children that
// rendezvous over loopback (Gloo) and run fn(comm) with GoogleTest assertions; a child exits
// non-zero when any assertion failed or fn threw. The parent fails the test for every child
// that did not exit 0, and kills them all after `timeout`.
#pragma once

#include <chrono>
#include <functional>
#include <string>
#include <vector>

#include "ds/comm/communicator.h"

namespace ds::test {

// A free TCP port on 127.0.0.1, held until destroyed: the socket stays bound with
// SO_REUSEADDR and does not listen, so the kernel gives the port to no other process (tests
// running in parallel) while rank 0's TCPStore, binding with SO_REUSEADDR too, can listen on it.
class PortReservation {
 public:
  PortReservation();
  ~PortReservation();
  PortReservation(const PortReservation&) = delete;
  PortReservation& operator=(const PortReservation&) = delete;
  int port() const { return port_; }
  // In a forked child: leave the socket to the parent (its destructor will not close it).
  void forget() { fd_ = -1; }

 private:
  int fd_ = -1;
  int port_ = 29500;
};

struct RankRun {
  std::chrono::seconds timeout{60};
  std::chrono::milliseconds comm_timeout{std::chrono::seconds(30)};
  // Which wait statuses count as success; default: a clean exit 0.
  std::function<bool(int rank, int wait_status)> accept = [](int, int status) { return status == 0; };
};

// Returns each child's wait status (0 = clean exit); also adds a gtest failure for each bad one.
std::vector<int> run_ranks(int world, const std::function<void(comm::Communicator&)>& fn, RankRun run = {});

// Forks `world` children running fn(rank, port) without creating a communicator (for tests
// of the rendezvous itself). Same reporting as run_ranks.
std::vector<int> run_processes(int world, const std::function<void(int rank, int port)>& fn, RankRun run = {});

}  // namespace ds::test
