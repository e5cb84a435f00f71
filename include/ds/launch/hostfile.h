// Hostfiles and the world they describe: which hosts run ranks, and which slots on each.
//
// A hostfile (DeepSpeed's / OpenMPI's format) lists one host per line:
//
//   # comments and blank lines are ignored
//   worker-0 slots=4
//   worker-1 slots=4     # trailing comments too
//
// --include / --exclude pick slots with `NODE_SPEC[@NODE_SPEC...]`, NODE_SPEC = `HOST[:SLOT[,SLOT...]]`:
//
//   auto pool  = ds::launch::parse_hostfile(text, "hostfile");           // hosts + slot counts
//   auto world = ds::launch::filter_world(world_from_pool(pool), "worker-0:0,1@worker-1", "");
//   // world: {worker-0: [0, 1]}, {worker-1: [0, 1, 2, 3]}
//   std::string wire = ds::launch::encode_world(world);                  // "worker-0:0,1@worker-1:0,1,2,3"
//
// Everything here is pure: no files are touched except by read_hostfile().
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace ds::launch {

// One line of a hostfile.
struct HostEntry {
  std::string host;
  int slots = 0;
  int line = 0;  // 1-based line number in the hostfile, for messages
};

// The hosts of a job in rank order, each with the slots (local device ids) it runs ranks on.
struct Node {
  std::string host;
  std::vector<int> slots;
};
using World = std::vector<Node>;

// Parses hostfile text. `source` names the file in error messages ("hosts.txt:3: ...").
// Throws ds::ConfigError for bad lines, bad or duplicate host names, slots < 1, and empty files.
std::vector<HostEntry> parse_hostfile(std::string_view text, std::string_view source);
// Reads and parses the hostfile at `path`.
std::vector<HostEntry> read_hostfile(const std::string& path);

// Host names must be safe to put on a command line unquoted and inside the include syntax:
// letters, digits, '.', '-' and '_' (not starting with '-'). Throws ds::ConfigError naming `what`.
void check_host_name(std::string_view host, std::string_view what);

// Every host with all its slots: {host, [0, slots)}.
World world_from_pool(const std::vector<HostEntry>& pool);

// Applies --include or --exclude (at most one of them non-empty) to `world`, keeping the
// world's host order. Unknown hosts and slots, bad syntax, both filters, or an empty result throw
// ds::ConfigError.
World filter_world(const World& world, std::string_view include, std::string_view exclude);

// --num_nodes (the first N hosts) and --num_procs (slots [0, N) on every host); -1 leaves the
// dimension alone. Asking for more than the world has throws ds::ConfigError.
World limit_world(const World& world, int num_nodes, int num_procs);

// A single line that round-trips a world through a command line: "h1:0,1@h2:0,1".
std::string encode_world(const World& world);
World decode_world(std::string_view text);

int world_size(const World& world);

}  // namespace ds::launch
