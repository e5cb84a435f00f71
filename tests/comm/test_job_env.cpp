// The job environment: ranks and rendezvous from ds-launch/torchrun, OpenMPI, PMI and Slurm
// variables, Slurm host lists, and sources that disagree (one line naming both).
#include "ds/comm/job_env.h"

#include <gtest/gtest.h>

#include <map>

#include "support/errors.h"

namespace ds::comm {
namespace {

struct FakeEnv {
  std::map<std::string, std::string> vars;
  EnvLookup lookup() const {
    return [this](const char* name) -> const char* {
      auto it = vars.find(name);
      return it == vars.end() ? nullptr : it->second.c_str();
    };
  }
};

JobEnv read(const std::map<std::string, std::string>& vars) {
  FakeEnv e{vars};
  return read_job_env(e.lookup());
}

TEST(JobEnv, NothingSetIsOneProcess) {
  const JobEnv j = read({});
  EXPECT_EQ(j.world_size, 1);
  EXPECT_EQ(j.rank, 0);
  EXPECT_EQ(j.source, "a single process");
}

TEST(JobEnv, LauncherVariablesWinAndCarryTheRendezvous) {
  const JobEnv j = read({{"RANK", "1"}, {"WORLD_SIZE", "4"}, {"LOCAL_RANK", "1"}, {"MASTER_ADDR", "10.0.0.1"},
                         {"MASTER_PORT", "29600"}});
  EXPECT_EQ(j.source, "RANK/WORLD_SIZE");
  EXPECT_EQ(j.rank, 1);
  EXPECT_EQ(j.world_size, 4);
  EXPECT_EQ(j.local_rank, 1);
  EXPECT_EQ(j.master_addr, "10.0.0.1");
  EXPECT_EQ(j.master_port, 29600);
  EXPECT_EQ(j.describe(), "rank 1 of 4 (local 1) from RANK/WORLD_SIZE, master 10.0.0.1:29600");
}

TEST(JobEnv, OpenMpiOnOneNodeRendezvousesOnLoopbackAtAPortEveryRankDerivesAlike) {
  std::map<std::string, std::string> vars = {{"OMPI_COMM_WORLD_RANK", "0"}, {"OMPI_COMM_WORLD_SIZE", "2"},
                                             {"OMPI_COMM_WORLD_LOCAL_RANK", "0"}, {"OMPI_COMM_WORLD_LOCAL_SIZE", "2"},
                                             {"OMPI_MCA_ess_base_jobid", "139460609"}};
  const JobEnv r0 = read(vars);
  vars["OMPI_COMM_WORLD_RANK"] = vars["OMPI_COMM_WORLD_LOCAL_RANK"] = "1";
  const JobEnv r1 = read(vars);
  EXPECT_EQ(r0.source, "OpenMPI");
  EXPECT_EQ(r1.rank, 1);
  EXPECT_EQ(r0.master_addr, "127.0.0.1");
  EXPECT_EQ(r0.master_port, r1.master_port);
  EXPECT_GE(r0.master_port, 20000);
  vars["OMPI_MCA_ess_base_jobid"] = "139460610";  // another job, another port
  EXPECT_NE(read(vars).master_port, r0.master_port);
  // Across nodes the environment does not say where rank 0 is.
  vars["OMPI_COMM_WORLD_LOCAL_SIZE"] = "1";
  EXPECT_EQ(read(vars).master_addr, "");
}

TEST(JobEnv, PmiGivesRankAndSize) {
  const JobEnv j = read({{"PMI_RANK", "3"}, {"PMI_SIZE", "4"}, {"MASTER_ADDR", "h"}, {"MASTER_PORT", "1234"}});
  EXPECT_EQ(j.source, "PMI");
  EXPECT_EQ(j.rank, 3);
  EXPECT_EQ(j.world_size, 4);
}

TEST(JobEnv, SlurmStepsUseTheFirstHostAndAJobDerivedPort) {
  std::map<std::string, std::string> vars = {{"SLURM_PROCID", "2"}, {"SLURM_NTASKS", "4"}, {"SLURM_LOCALID", "0"},
                                             {"SLURM_STEP_ID", "0"}, {"SLURM_JOB_ID", "4242"},
                                             {"SLURM_JOB_NODELIST", "cpu[07-08,11],login1"}};
  const JobEnv j = read(vars);
  EXPECT_EQ(j.source, "Slurm");
  EXPECT_EQ(j.rank, 2);
  EXPECT_EQ(j.world_size, 4);
  EXPECT_EQ(j.master_addr, "cpu07");
  vars["SLURM_PROCID"] = "0";
  EXPECT_EQ(read(vars).master_port, j.master_port);  // every rank derives the same port
  vars["SLURM_STEP_ID"] = "1";
  EXPECT_NE(read(vars).master_port, j.master_port);  // the next step of the job another
  vars["MASTER_PORT"] = "30000";
  EXPECT_EQ(read(vars).master_port, 30000);
  // A batch script's variables (no step) describe the allocation, not this process.
  EXPECT_EQ(read({{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "4"}, {"SLURM_JOB_ID", "1"}}).world_size, 1);
  // mpirun inside a batch script: OpenMPI's ranks, the allocation's variables ignored.
  EXPECT_EQ(read({{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "8"}, {"OMPI_COMM_WORLD_RANK", "3"},
                  {"OMPI_COMM_WORLD_SIZE", "4"}, {"MASTER_ADDR", "h"}, {"MASTER_PORT", "1"}})
                .rank,
            3);
}

TEST(JobEnv, SlurmHostListsExpandLikeScontrol) {
  EXPECT_EQ(first_slurm_host("node01"), "node01");
  EXPECT_EQ(first_slurm_host("node[01-04,07],gpu5"), "node01");
  EXPECT_EQ(first_slurm_host("gpu5,node[01-04]"), "gpu5");
  EXPECT_EQ(first_slurm_host("rack[2-3]-n[05-06]"), "rack2-n05");
  EXPECT_EQ(first_slurm_host("n[9,10]"), "n9");
  EXPECT_ERROR_HAS(first_slurm_host("node[01-04"), "unbalanced '['");
  EXPECT_ERROR_HAS(first_slurm_host(""), "names no host");
}

TEST(JobEnv, SourcesThatDisagreeAndMalformedValuesAreOneLine) {
  EXPECT_ERROR_HAS(read({{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"SLURM_PROCID", "1"}, {"SLURM_NTASKS", "4"},
                         {"SLURM_STEP_ID", "0"}}),
                   "RANK/WORLD_SIZE says rank 0 of 2 but Slurm says rank 1 of 4");
  EXPECT_ERROR_HAS(read({{"OMPI_COMM_WORLD_RANK", "1"}, {"OMPI_COMM_WORLD_SIZE", "2"}, {"PMI_RANK", "0"}, {"PMI_SIZE", "2"}}),
                   "OpenMPI says rank 1 of 2 but PMI says rank 0 of 2");
  EXPECT_ERROR_HAS(read({{"RANK", "1"}}), "RANK is set but WORLD_SIZE is not");
  EXPECT_ERROR_HAS(read({{"RANK", "x"}, {"WORLD_SIZE", "2"}}), "RANK='x' is not a non-negative integer");
  EXPECT_ERROR_HAS(read({{"RANK", "2"}, {"WORLD_SIZE", "2"}}), "RANK=2 is not a rank of WORLD_SIZE=2");
  // Agreeing sources are fine (srun with PMI).
  EXPECT_EQ(read({{"SLURM_PROCID", "1"}, {"SLURM_NTASKS", "2"}, {"SLURM_STEP_ID", "0"}, {"PMI_RANK", "1"},
                  {"PMI_SIZE", "2"}, {"MASTER_ADDR", "h"}, {"MASTER_PORT", "1"}})
                .source,
            "PMI");
}

}  // namespace
}  // namespace ds::comm
