// Rank assignment: which global ranks a node runs and the environment each rank sees.
//
// Ranks are numbered node by node in world order, like DeepSpeed's launcher and torchrun:
// node 0 gets ranks [0, n0), node 1 gets [n0, n0 + n1), ...
//
//   auto node = ds::launch::node_ranks(world, /*node_rank=*/1);
//   for (const auto& r : node.ranks) {
//     auto env = ds::launch::rank_env(node, r, {"10.0.0.1", 29500});
//     // MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, GROUP_RANK, ...
//   }
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "ds/launch/hostfile.h"

namespace ds::launch {

// An environment variable a launcher sets for the processes it starts.
using EnvVar = std::pair<std::string, std::string>;

struct RankInfo {
  int rank = 0;        // global rank
  int local_rank = 0;  // index among this node's ranks
  int slot = 0;        // the slot (device id) of the hostfile it runs on
};

// The ranks one node runs.
struct NodeRanks {
  int node_rank = 0;
  int num_nodes = 0;
  int world_size = 0;
  std::string host;
  std::vector<RankInfo> ranks;
};

// Where rank 0 listens for the rendezvous (c10d TCPStore).
struct MasterEndpoint {
  std::string addr;
  int port = 0;
};

// Throws ds::ConfigError when node_rank is outside [0, world.size()).
NodeRanks node_ranks(const World& world, int node_rank);

// The variables that tell a rank where it is, torchrun's names and DeepSpeed's:
// MASTER_ADDR MASTER_PORT RANK WORLD_SIZE LOCAL_RANK LOCAL_WORLD_SIZE GROUP_RANK NODE_RANK
// GROUP_WORLD_SIZE ROLE_RANK ROLE_WORLD_SIZE CROSS_RANK CROSS_SIZE LOCAL_SIZE DS_SLOT.
std::vector<EnvVar> rank_env(const NodeRanks& node, const RankInfo& rank, const MasterEndpoint& master);

// Threads per rank when OMP_NUM_THREADS is not set: the cores shared evenly, at least 1.
int default_omp_threads(int cpu_count, int local_world_size);

}  // namespace ds::launch
