// Reading the rank, the world and the rendezvous from a job environment (see job_env.h).
#include "ds/comm/job_env.h"

#include <cstdlib>
#include <optional>
#include <vector>

#include "ds/common/error.h"

namespace ds::comm {

namespace {

struct Source {
  const char* name;
  const char* rank_var;
  const char* size_var;
  const char* local_var;  // may be unset
};

// In order of precedence: what a launcher set for this process, then the process manager
// that started it, then Slurm's step.
constexpr Source kSources[] = {
    {"RANK/WORLD_SIZE", "RANK", "WORLD_SIZE", "LOCAL_RANK"},
    {"OpenMPI", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"},
    {"PMI", "PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID"},
    {"Slurm", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"},
};

struct Found {
  const Source* source;
  int rank, size, local;
};

const char* get(const EnvLookup& env, const char* name) {
  const char* v = env(name);
  return v && *v ? v : nullptr;
}

std::optional<long long> number(const EnvLookup& env, const char* name, long long max = 1000000000) {
  const char* v = get(env, name);
  if (!v) return std::nullopt;
  char* end = nullptr;
  const long long x = std::strtoll(v, &end, 10);
  if (*end != '\0' || x < 0 || x > max)
    throw CommError(ds::str("environment variable ", name, "='", v, "' is not a non-negative integer"));
  return x;
}

// A port every rank of the job derives alike, away from the well-known ones.
int derived_port(unsigned long long id) { return 20000 + int(id % 30000); }

unsigned long long hash(const std::string& s) {
  unsigned long long h = 1469598103934665603ull;  // FNV-1a
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
  return h;
}

}  // namespace

const char* process_env(const char* name) { return std::getenv(name); }

std::string JobEnv::describe() const {
  std::string s = ds::str("rank ", rank, " of ", world_size, " (local ", local_rank, ") from ", source);
  if (!master_addr.empty()) s += ds::str(", master ", master_addr, ":", master_port);
  return s;
}

std::string first_slurm_host(const std::string& nodelist) {
  // The first item at bracket depth 0, then each bracket's first number (zero padding kept).
  std::string out;
  int depth = 0;
  for (size_t i = 0; i < nodelist.size(); ++i) {
    const char c = nodelist[i];
    if (c == ',' && depth == 0) break;
    if (c == '[') {
      const size_t close = nodelist.find(']', i);
      if (close == std::string::npos) throw CommError(ds::str("Slurm host list '", nodelist, "': unbalanced '['"));
      const std::string inside = nodelist.substr(i + 1, close - i - 1);
      out += inside.substr(0, inside.find_first_of(",-"));
      i = close;
      continue;
    }
    if (c == ']') throw CommError(ds::str("Slurm host list '", nodelist, "': unbalanced ']'"));
    out += c;
  }
  if (out.empty()) throw CommError(ds::str("Slurm host list '", nodelist, "' names no host"));
  return out;
}

JobEnv read_job_env(const EnvLookup& env) {
  // RANK without WORLD_SIZE (or the reverse) is a launcher mistake, not "no launcher".
  for (const Source& s : kSources) {
    const bool has_rank = get(env, s.rank_var) != nullptr, has_size = get(env, s.size_var) != nullptr;
    if (has_rank != has_size && std::string(s.name) != "Slurm")
      throw CommError(ds::str(has_rank ? s.rank_var : s.size_var, " is set but ", has_rank ? s.size_var : s.rank_var,
                              " is not; start the ranks with ds-launch (or torchrun, mpirun, srun)"));
  }
  const bool in_slurm_step = get(env, "SLURM_STEP_ID") || get(env, "SLURM_STEPID");
  std::vector<Found> found;
  for (const Source& s : kSources) {
    if (std::string(s.name) == "Slurm" && !in_slurm_step) continue;
    const auto rank = number(env, s.rank_var), size = number(env, s.size_var);
    if (!rank || !size) continue;
    if (*size < 1 || *rank >= *size)
      throw CommError(ds::str(s.rank_var, "=", *rank, " is not a rank of ", s.size_var, "=", *size));
    found.push_back({&s, int(*rank), int(*size), int(number(env, s.local_var).value_or(0))});
  }
  JobEnv job;
  if (found.empty()) {
    job.master_addr = get(env, "MASTER_ADDR") ? get(env, "MASTER_ADDR") : "";
    job.master_port = int(number(env, "MASTER_PORT", 65535).value_or(0));
    return job;
  }
  const Found& use = found.front();
  for (size_t i = 1; i < found.size(); ++i)
    if (found[i].rank != use.rank || found[i].size != use.size)
      throw CommError(ds::str(use.source->name, " says rank ", use.rank, " of ", use.size, " but ", found[i].source->name,
                              " says rank ", found[i].rank, " of ", found[i].size,
                              ": two launchers describe this process; unset one (e.g. do not export RANK/WORLD_SIZE "
                              "into an srun or mpirun job)"));
  job.source = use.source->name;
  job.rank = use.rank, job.world_size = use.size, job.local_rank = use.local;
  const std::string source = job.source;
  if (const char* addr = get(env, "MASTER_ADDR")) {
    job.master_addr = addr;
  } else if (source == "Slurm") {
    const char* list = get(env, "SLURM_STEP_NODELIST") ? get(env, "SLURM_STEP_NODELIST")
                       : get(env, "SLURM_JOB_NODELIST") ? get(env, "SLURM_JOB_NODELIST")
                                                        : get(env, "SLURM_NODELIST");
    if (list) job.master_addr = first_slurm_host(list);
  } else if (source == "OpenMPI" && number(env, "OMPI_COMM_WORLD_LOCAL_SIZE").value_or(0) == job.world_size) {
    job.master_addr = "127.0.0.1";  // every rank on this node
  }
  if (job.world_size == 1 && job.master_addr.empty()) job.master_addr = "127.0.0.1";
  if (const auto port = number(env, "MASTER_PORT", 65535)) {
    job.master_port = int(*port);
  } else if (source == "Slurm" && get(env, "SLURM_JOB_ID")) {
    const auto job_id = number(env, "SLURM_JOB_ID", 1ll << 62).value_or(0);
    const auto step = number(env, "SLURM_STEP_ID", 1ll << 32).value_or(number(env, "SLURM_STEPID", 1ll << 32).value_or(0));
    job.master_port = derived_port(unsigned(job_id) * 131ull + unsigned(step));
  } else if (source == "OpenMPI" || source == "PMI") {
    const char* id = get(env, "OMPI_MCA_ess_base_jobid") ? get(env, "OMPI_MCA_ess_base_jobid") : get(env, "PMIX_NAMESPACE");
    if (id) job.master_port = derived_port(hash(id));
  }
  if (job.master_port == 0 && job.world_size == 1) job.master_port = 29500;
  return job;
}

}  // namespace ds::comm
