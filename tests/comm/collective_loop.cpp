// A rank program for the failure tests: joins the job (Gloo), writes its pid to
// <dir>/pid.<RANK>, then all-reduces 4 MiB buffers for up to 60 s. Exits 3 with one line on
// stderr when a collective fails (as a peer's death should make it do).
#include <ATen/ATen.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>

#include "ds/comm/communicator.h"

int main(int argc, char** argv) {
  if (argc < 2) return 2;
  try {
    ds::comm::CommOptions o;
    o.timeout = std::chrono::seconds(20);
    auto comm = ds::comm::init_from_env(o);
    std::ofstream(std::string(argv[1]) + "/pid." + std::to_string(comm->rank())) << ::getpid() << "\n";
    at::Tensor t = at::ones({1 << 20});
    auto end = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (std::chrono::steady_clock::now() < end) comm->all_reduce(t, ds::comm::ReduceOp::Avg).wait();
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "collective_loop: %s\n", e.what());
    return 3;
  }
}
