// Choosing and creating the world communicator from the launcher's environment.
#include <cstdlib>

#include "ds/comm/communicator.h"
#include "ds/common/error.h"

namespace ds::comm {
namespace {

const char* env(const char* name) {
  const char* v = std::getenv(name);
  return (v && *v) ? v : nullptr;
}

int env_int(const char* name, int fallback) {
  const char* v = env(name);
  if (!v) return fallback;
  char* end = nullptr;
  long x = std::strtol(v, &end, 10);
  if (*end != '\0' || x < 0 || x > 1000000000)
    throw CommError(ds::str("environment variable ", name, "='", v, "' is not a non-negative integer"));
  return static_cast<int>(x);
}

bool started_by_mpirun() { return env("OMPI_COMM_WORLD_SIZE") || env("PMI_SIZE") || env("PMIX_RANK"); }

}  // namespace

std::string default_backend() {
  if (const char* b = env("DS_COMM_BACKEND")) {
    std::string s = b;
    if (s != "gloo" && s != "mpi") throw CommError(ds::str("DS_COMM_BACKEND='", s, "': expected gloo or mpi"));
    return s;
  }
#ifdef DS_WITH_MPI
  if (started_by_mpirun()) return "mpi";
#endif
  return "gloo";
}

std::shared_ptr<Communicator> init_from_env(CommOptions options) {
  if (env("DS_COMM_TIMEOUT")) options.timeout = std::chrono::seconds(env_int("DS_COMM_TIMEOUT", 300));
  if (default_backend() == "mpi") {
    auto comm = make_mpi(options);
    // A launcher's WORLD_SIZE/RANK (ds-launch, torchrun) must describe the same job as MPI's:
    // started without mpirun, every process is an MPI world of its own and would train alone.
    const char* world = env("WORLD_SIZE");
    if (world && env_int("WORLD_SIZE", 1) != comm->size())
      throw CommError(ds::str("DS_COMM_BACKEND=mpi, but MPI sees a world of ", comm->size(), " while WORLD_SIZE=", world,
                              ": start the ranks with mpirun (ds-launch --launcher mpirun) or use the gloo backend"));
    if (env("RANK") && env_int("RANK", 0) != comm->rank())
      throw CommError(ds::str("DS_COMM_BACKEND=mpi, but MPI ranks this process ", comm->rank(), " while RANK=",
                              env("RANK"), ": the launcher and MPI disagree on the rank order"));
    return comm;
  }
  GlooOptions o;
  static_cast<CommOptions&>(o) = options;
  bool has_rank = env("RANK") != nullptr, has_world = env("WORLD_SIZE") != nullptr;
  if (has_rank != has_world)
    throw CommError(ds::str(has_rank ? "RANK" : "WORLD_SIZE", " is set but ", has_rank ? "WORLD_SIZE" : "RANK",
                        " is not; start the ranks with ds-launch (or torchrun, or mpirun)"));
  o.rank = env_int("RANK", 0);
  o.world_size = env_int("WORLD_SIZE", 1);
  if (o.world_size > 1 && (!env("MASTER_ADDR") || !env("MASTER_PORT")))
    throw CommError("WORLD_SIZE > 1 needs MASTER_ADDR and MASTER_PORT; start the ranks with ds-launch");
  if (const char* a = env("MASTER_ADDR")) o.master_addr = a;
  o.master_port = env_int("MASTER_PORT", 29500);
  if (const char* ifname = env("GLOO_SOCKET_IFNAME")) o.interface = ifname;
  return make_gloo(o);
}

#ifndef DS_WITH_MPI
std::shared_ptr<Communicator> make_mpi(const CommOptions&) {
  throw CommError("this deepspeed.cpp was built without MPI (configure with -DDS_WITH_MPI=ON and libopenmpi-dev)");
}
#endif

}  // namespace ds::comm
