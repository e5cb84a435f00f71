// Choosing and creating the world communicator from the launcher's environment.
#include <cstdio>
#include <cstdlib>

#include "ds/comm/communicator.h"
#include "ds/comm/job_env.h"
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
  const JobEnv job = read_job_env(process_env);
  const bool launched = job.source != JobEnv{}.source;
  if (default_backend() == "mpi") {
    auto comm = make_mpi(options);
    // A launcher's ranks (ds-launch, torchrun, srun) must describe the same job as MPI's:
    // started without mpirun, every process is an MPI world of its own and would train alone.
    if (launched && job.world_size != comm->size())
      throw CommError(ds::str("DS_COMM_BACKEND=mpi, but MPI sees a world of ", comm->size(), " while ", job.source,
                              " says ", job.world_size, ": start the ranks with mpirun (ds-launch --launcher mpirun) "
                              "or use the gloo backend"));
    if (launched && job.rank != comm->rank())
      throw CommError(ds::str("DS_COMM_BACKEND=mpi, but MPI ranks this process ", comm->rank(), " while ", job.source,
                              " says ", job.rank, ": the launcher and MPI disagree on the rank order"));
    return comm;
  }
  GlooOptions o;
  static_cast<CommOptions&>(o) = options;
  o.rank = job.rank;
  o.world_size = job.world_size;
  if (o.world_size > 1 && (job.master_addr.empty() || job.master_port == 0))
    throw CommError(ds::str(job.source, " gives ", o.world_size, " ranks but not where rank 0 listens: set MASTER_ADDR "
                            "and MASTER_PORT (with mpirun across nodes: -x MASTER_ADDR=<rank 0's host> -x "
                            "MASTER_PORT=29500), or start the ranks with ds-launch"));
  if (!job.master_addr.empty()) o.master_addr = job.master_addr;
  if (job.master_port != 0) o.master_port = job.master_port;
  if (const char* ifname = env("GLOO_SOCKET_IFNAME")) o.interface = ifname;
  if (launched && o.rank == 0 && job.source != "RANK/WORLD_SIZE") {
    std::printf("[ds] %s\n", job.describe().c_str());
    std::fflush(stdout);
  }
  return make_gloo(o);
}

#ifndef DS_WITH_MPI
std::shared_ptr<Communicator> make_mpi(const CommOptions&) {
  throw CommError("this deepspeed.cpp was built without MPI (configure with -DDS_WITH_MPI=ON and libopenmpi-dev)");
}
#endif

}  // namespace ds::comm
