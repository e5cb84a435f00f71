// Where this process's rank comes from: the job environment a launcher or process manager set.
//
//   RANK / WORLD_SIZE / LOCAL_RANK        ds-launch, torchrun
//   OMPI_COMM_WORLD_RANK / _SIZE / _LOCAL_RANK   OpenMPI's mpirun
//   PMI_RANK / PMI_SIZE                   MPICH, Intel MPI (PMI)
//   SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID  srun (inside a job step only: a batch
//                                          script's own variables describe the allocation)
//
// The first present in that order is used; any other that is present must agree on the rank
// and the world size, else it is an error naming both. MASTER_ADDR / MASTER_PORT, when set,
// win; otherwise Slurm's master is the first host of SLURM_JOB_NODELIST (expanded as
// `scontrol show hostnames` does) and its port derived from the job and step ids; mpirun's on
// one node is 127.0.0.1 with a port derived from the job id (every rank derives the same).
//
//   ds::comm::JobEnv job = ds::comm::read_job_env(ds::comm::process_env);
//   job.describe();   // "rank 1 of 4 (local 1) from Slurm, master node01:23456"
#pragma once

#include <functional>
#include <string>

namespace ds::comm {

struct JobEnv {
  std::string source = "a single process";  // "RANK/WORLD_SIZE", "Slurm", "OpenMPI", "PMI"
  int rank = 0, world_size = 1, local_rank = 0;
  std::string master_addr;  // "" when the environment does not tell
  int master_port = 0;      // 0 when the environment does not tell
  std::string describe() const;
};

// An environment lookup: nullptr (or "") for an unset variable.
using EnvLookup = std::function<const char*(const char*)>;
const char* process_env(const char* name);  // std::getenv

// Throws ds::comm::CommError for malformed values and sources that disagree.
JobEnv read_job_env(const EnvLookup& env);

// The first host of a Slurm host list: "node[01-04,07],gpu5" -> "node01",
// "rack[2-3]-n[5-6]" -> "rack2-n5". Throws CommError for an unbalanced bracket.
std::string first_slurm_host(const std::string& nodelist);

}  // namespace ds::comm
