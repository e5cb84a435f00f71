#include "ds/launch/hostfile.h"

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "ds/common/error.h"
#include "ds/common/strings.h"

namespace ds::launch {

namespace {

constexpr int kMaxSlots = 1 << 20;

bool all_digits(std::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

// Parses a non-negative decimal no larger than `max`; returns -1 otherwise.
long parse_count(std::string_view s, long max) {
  if (!all_digits(s) || s.size() > 9) return -1;
  long v = std::stol(std::string(s));
  return v <= max ? v : -1;
}

std::vector<std::string> whitespace_tokens(std::string_view line) {
  std::istringstream in{std::string(line)};
  std::vector<std::string> out;
  for (std::string tok; in >> tok;) out.push_back(tok);
  return out;
}

std::string join_hosts(const World& world) {
  std::string out;
  for (const auto& n : world) out += (out.empty() ? "" : ", ") + n.host;
  return out;
}

const Node* find_node(const World& world, std::string_view host) {
  for (const auto& n : world)
    if (n.host == host) return &n;
  return nullptr;
}

std::string unknown_host_message(std::string_view what, std::string_view host, const World& world) {
  std::vector<std::string> names;
  for (const auto& n : world) names.push_back(n.host);
  std::string hint = nearest(host, names);
  return str(what, ": host '", host, "' is not in the hostfile (hosts: ", join_hosts(world), ")",
             hint.empty() ? "" : str("; did you mean '", hint, "'?"));
}

std::string slot_list(const std::vector<int>& slots) {
  std::string out;
  for (int s : slots) out += (out.empty() ? "" : ",") + std::to_string(s);
  return out;
}

// One NODE_SPEC of an include/exclude/world string: HOST or HOST:SLOT[,SLOT...].
struct NodeSpec {
  std::string host;
  bool all_slots = true;
  std::vector<int> slots;
};

std::vector<NodeSpec> parse_node_specs(std::string_view text, std::string_view what) {
  std::vector<NodeSpec> out;
  for (const std::string& part : split(text, '@')) {
    NodeSpec spec;
    size_t colon = part.find(':');
    spec.host = part.substr(0, colon);
    if (spec.host.empty())
      throw ConfigError(str(what, " '", text, "': empty host name (expected HOST[:SLOT,...][@HOST...])"));
    check_host_name(spec.host, what);
    if (colon != std::string::npos) {
      spec.all_slots = false;
      std::set<int> seen;  // sets, not linear scans: a host may have up to kMaxSlots slots
      for (const std::string& s : split(std::string_view(part).substr(colon + 1), ',')) {
        long slot = parse_count(s, kMaxSlots);
        if (slot < 0)
          throw ConfigError(str(what, " '", text, "': bad slot '", s, "' for host '", spec.host,
                                "' (expected a list of slot numbers such as 0,1)"));
        if (seen.insert(int(slot)).second) spec.slots.push_back(static_cast<int>(slot));
      }
    }
    out.push_back(std::move(spec));
  }
  return out;
}

void check_slots_exist(const Node& node, const std::vector<int>& slots, std::string_view what) {
  const std::set<int> has(node.slots.begin(), node.slots.end());
  for (int s : slots)
    if (!has.count(s))
      throw ConfigError(
          str(what, ": host '", node.host, "' has no slot ", s, " (its slots: ", slot_list(node.slots), ")"));
}

World apply_include(const World& world, std::string_view include) {
  std::map<std::string, std::pair<std::vector<int>, std::set<int>>> chosen;  // in order, and as a set
  for (const NodeSpec& spec : parse_node_specs(include, "--include")) {
    const Node* node = find_node(world, spec.host);
    if (!node) throw ConfigError(unknown_host_message("--include", spec.host, world));
    check_slots_exist(*node, spec.slots, "--include");
    auto& [slots, seen] = chosen[spec.host];
    for (int s : spec.all_slots ? node->slots : spec.slots)
      if (seen.insert(s).second) slots.push_back(s);
  }
  World out;
  for (const Node& n : world)
    if (auto it = chosen.find(n.host); it != chosen.end()) out.push_back({n.host, it->second.first});
  return out;
}

World apply_exclude(const World& world, std::string_view exclude) {
  World out = world;
  for (const NodeSpec& spec : parse_node_specs(exclude, "--exclude")) {
    const Node* node = find_node(world, spec.host);
    if (!node) throw ConfigError(unknown_host_message("--exclude", spec.host, world));
    check_slots_exist(*node, spec.slots, "--exclude");
    for (Node& n : out) {
      if (n.host != spec.host) continue;
      if (spec.all_slots) n.slots.clear();
      const std::set<int> drop(spec.slots.begin(), spec.slots.end());
      n.slots.erase(std::remove_if(n.slots.begin(), n.slots.end(), [&](int s) { return drop.count(s) > 0; }),
                    n.slots.end());
    }
  }
  out.erase(std::remove_if(out.begin(), out.end(), [](const Node& n) { return n.slots.empty(); }), out.end());
  return out;
}

}  // namespace

void check_host_name(std::string_view host, std::string_view what) {
  bool ok = !host.empty() && host[0] != '-' && std::all_of(host.begin(), host.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '-' || c == '_';
  });
  if (!ok)
    throw ConfigError(str(what, ": host name '", host,
                          "' may only contain letters, digits, '.', '-' and '_' (and not start with '-')"));
}

std::vector<HostEntry> parse_hostfile(std::string_view text, std::string_view source) {
  std::vector<HostEntry> pool;
  int line_no = 0;
  for (const std::string& raw : split(text, '\n')) {
    ++line_no;
    std::string_view line = raw;
    line = line.substr(0, line.find('#'));
    std::vector<std::string> tok = whitespace_tokens(line);
    if (tok.empty()) continue;
    std::string where = str(source, ":", line_no);
    if (tok.size() != 2 || !starts_with(tok[1], "slots="))
      throw ConfigError(str(where, ": expected 'HOST slots=N', got '", trim(line), "'"));
    check_host_name(tok[0], where);
    long slots = parse_count(std::string_view(tok[1]).substr(6), kMaxSlots);
    if (slots < 1)
      throw ConfigError(str(where, ": bad slot count '", tok[1].substr(6), "' for host '", tok[0],
                            "' (expected an integer from 1 to ", kMaxSlots, ")"));
    for (const HostEntry& e : pool)
      if (e.host == tok[0])
        throw ConfigError(str(where, ": host '", tok[0], "' is listed twice (first on line ", e.line, ")"));
    pool.push_back({tok[0], static_cast<int>(slots), line_no});
  }
  if (pool.empty()) throw ConfigError(str(source, ": no hosts (expected lines 'HOST slots=N')"));
  return pool;
}

std::vector<HostEntry> read_hostfile(const std::string& path) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec))
    throw ConfigError(str("hostfile '", path, "' is a directory; give a file of lines 'HOST slots=N'"));
  std::ifstream in(path, std::ios::binary);
  if (!in) throw ConfigError(str("cannot read hostfile '", path, "'"));
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) throw ConfigError(str("error while reading hostfile '", path, "'"));
  return parse_hostfile(text.str(), path);
}

World world_from_pool(const std::vector<HostEntry>& pool) {
  World world;
  for (const HostEntry& e : pool) {
    Node n{e.host, {}};
    for (int s = 0; s < e.slots; ++s) n.slots.push_back(s);
    world.push_back(std::move(n));
  }
  return world;
}

World filter_world(const World& world, std::string_view include, std::string_view exclude) {
  if (!include.empty() && !exclude.empty())
    throw ConfigError("--include and --exclude are mutually exclusive");
  if (include.empty() && exclude.empty()) return world;
  World out = include.empty() ? apply_exclude(world, exclude) : apply_include(world, include);
  if (out.empty())
    throw ConfigError(
        str("--exclude '", exclude, "' leaves no slots to run on (hosts: ", join_hosts(world), ")"));
  return out;
}

World limit_world(const World& world, int num_nodes, int num_procs) {
  World out = world;
  if (num_nodes != -1) {
    if (num_nodes < 1) throw ConfigError(str("--num_nodes must be at least 1, got ", num_nodes));
    if (static_cast<size_t>(num_nodes) > world.size())
      throw ConfigError(str("--num_nodes ", num_nodes, " but the hostfile lists only ", world.size(),
                            world.size() == 1 ? " host" : " hosts", " (", join_hosts(world), ")"));
    out.resize(static_cast<size_t>(num_nodes));
  }
  if (num_procs != -1) {
    if (num_procs < 1) throw ConfigError(str("--num_procs must be at least 1, got ", num_procs));
    for (Node& n : out) {
      if (static_cast<size_t>(num_procs) > n.slots.size())
        throw ConfigError(str("--num_procs ", num_procs, " but host '", n.host, "' has only ", n.slots.size(),
                              n.slots.size() == 1 ? " slot" : " slots"));
      n.slots.clear();
      for (int s = 0; s < num_procs; ++s) n.slots.push_back(s);
    }
  }
  return out;
}

std::string encode_world(const World& world) {
  std::string out;
  for (const Node& n : world) out += (out.empty() ? "" : "@") + n.host + ":" + slot_list(n.slots);
  return out;
}

World decode_world(std::string_view text) {
  World world;
  for (NodeSpec& spec : parse_node_specs(text, "--world_info")) {
    if (spec.all_slots || spec.slots.empty())
      throw ConfigError(str("--world_info '", text, "': host '", spec.host, "' has no slot list"));
    if (find_node(world, spec.host))
      throw ConfigError(str("--world_info '", text, "': host '", spec.host, "' appears twice"));
    world.push_back({spec.host, spec.slots});
  }
  return world;
}

int world_size(const World& world) {
  size_t n = 0;
  for (const Node& node : world) n += node.slots.size();
  return static_cast<int>(n);
}

}  // namespace ds::launch
