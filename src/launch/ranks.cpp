#include "ds/launch/ranks.h"

#include <algorithm>

#include "ds/common/error.h"

namespace ds::launch {

NodeRanks node_ranks(const World& world, int node_rank) {
  if (node_rank < 0 || static_cast<size_t>(node_rank) >= world.size())
    throw ConfigError(str("--node_rank ", node_rank, " is outside the world of ", world.size(),
                          world.size() == 1 ? " node" : " nodes", " (valid: 0..", world.size() - 1, ")"));
  NodeRanks out;
  out.node_rank = node_rank;
  out.num_nodes = static_cast<int>(world.size());
  out.world_size = world_size(world);
  out.host = world[static_cast<size_t>(node_rank)].host;
  int first = 0;
  for (int i = 0; i < node_rank; ++i) first += static_cast<int>(world[static_cast<size_t>(i)].slots.size());
  const std::vector<int>& slots = world[static_cast<size_t>(node_rank)].slots;
  for (size_t i = 0; i < slots.size(); ++i)
    out.ranks.push_back({first + static_cast<int>(i), static_cast<int>(i), slots[i]});
  return out;
}

std::vector<EnvVar> rank_env(const NodeRanks& node, const RankInfo& rank, const MasterEndpoint& master) {
  const std::string local_size = std::to_string(node.ranks.size());
  const std::string node_rank = std::to_string(node.node_rank);
  const std::string num_nodes = std::to_string(node.num_nodes);
  const std::string world = std::to_string(node.world_size);
  return {
      {"MASTER_ADDR", master.addr},
      {"MASTER_PORT", std::to_string(master.port)},
      {"RANK", std::to_string(rank.rank)},
      {"WORLD_SIZE", world},
      {"LOCAL_RANK", std::to_string(rank.local_rank)},
      {"LOCAL_WORLD_SIZE", local_size},
      // torchrun: the node is a "group"; every rank has the single role "default".
      {"GROUP_RANK", node_rank},
      {"GROUP_WORLD_SIZE", num_nodes},
      {"ROLE_RANK", std::to_string(rank.rank)},
      {"ROLE_WORLD_SIZE", world},
      {"NODE_RANK", node_rank},
      // DeepSpeed's launcher names.
      {"CROSS_RANK", node_rank},
      {"CROSS_SIZE", num_nodes},
      {"LOCAL_SIZE", local_size},
      {"DS_SLOT", std::to_string(rank.slot)},
  };
}

int default_omp_threads(int cpu_count, int local_world_size) {
  if (cpu_count < 1 || local_world_size < 1) return 1;
  return std::max(1, cpu_count / local_world_size);
}

}  // namespace ds::launch
