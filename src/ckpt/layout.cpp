#include "ds/ckpt/layout.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdio>
#include <unordered_set>

#include "ds/common/error.h"

namespace ds::ckpt {

const char* to_string(PartitionScheme s) {
  switch (s) {
    case PartitionScheme::kTensorSplit:
      return "tensor_split";
    case PartitionScheme::kEqualChunks:
      return "equal_chunks";
  }
  return "?";
}

PartitionScheme partition_scheme_from_string(const std::string& s) {
  if (s == "tensor_split") return PartitionScheme::kTensorSplit;
  if (s == "equal_chunks") return PartitionScheme::kEqualChunks;
  throw Error(ds::str("unknown partition scheme \"", s, "\" (expected tensor_split or equal_chunks)"));
}

namespace {

void check_partition_args(int64_t n, const Partition& p, int index) {
  DS_CHECK(n >= 0 && p.count >= 1 && index >= 0 && index < p.count, "partition of ", n, " elements into ",
           p.count, " parts: no part ", index);
}

}  // namespace

Range partition_range(int64_t n, const Partition& p, int index) {
  check_partition_args(n, p, index);
  if (p.scheme == PartitionScheme::kTensorSplit) {
    int64_t q = n / p.count, r = n % p.count;
    return {index * q + std::min<int64_t>(index, r), q + (index < r ? 1 : 0)};
  }
  int64_t chunk = (n + p.count - 1) / p.count;
  int64_t offset = std::min(index * chunk, n);
  return {offset, std::min(chunk, n - offset)};
}

int partition_of(int64_t n, const Partition& p, int64_t element) {
  check_partition_args(n, p, 0);
  DS_CHECK(element >= 0 && element < n, "element ", element, " is outside a buffer of ", n);
  if (p.scheme == PartitionScheme::kTensorSplit) {
    int64_t q = n / p.count, r = n % p.count, big = r * (q + 1);
    return int(element < big ? element / (q + 1) : r + (element - big) / q);
  }
  return int(element / ((n + p.count - 1) / p.count));
}

at::Tensor join_slices(const std::vector<at::Tensor>& pieces, int dim, int groups) {
  if (groups == 1) return at::cat(pieces, dim);
  std::vector<at::Tensor> blocks;  // block 0 of every rank, then block 1, ...
  for (int g = 0; g < groups; ++g)
    for (const at::Tensor& p : pieces) blocks.push_back(p.chunk(groups, dim)[size_t(g)]);
  return at::cat(blocks, dim);
}

std::string shape_string(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

namespace {

void check_slot(const SlotInfo& s, const UnitInfo& u, const std::string& where) {
  if (s.name.empty()) throw Error(ds::str(where, ".name: empty parameter name"));
  if (s.split_dim < -1 || s.split_dim >= int(s.shape.size()))
    throw Error(ds::str(where, " (", s.name, "): split_dim ", s.split_dim, " is not a dimension of shape ",
                        shape_string(s.shape), " (or -1)"));
  if (s.split_groups < 1 || (s.split_dim >= 0 && s.shape[size_t(s.split_dim)] % s.split_groups != 0))
    throw Error(ds::str(where, " (", s.name, "): split_groups ", s.split_groups, " does not divide dimension ",
                        s.split_dim, " of shape ", shape_string(s.shape)));
  int64_t product = 1;
  for (int64_t d : s.shape) {
    if (d < 0 || (d > 0 && __builtin_mul_overflow(product, d, &product)))
      throw Error(ds::str(where, " (", s.name, "): bad shape ", shape_string(s.shape)));
  }
  if (s.numel != product)
    throw Error(
        ds::str(where, " (", s.name, "): numel ", s.numel, " does not match shape ", shape_string(s.shape)));
  int64_t end = 0;
  if (s.offset < 0 || s.numel < 0 || __builtin_add_overflow(s.offset, s.numel, &end) || end > u.numel)
    throw Error(ds::str(where, " (", s.name, "): elements [", s.offset, ", ", s.offset, "+", s.numel,
                        ") are outside the unit's ", u.numel, " parameter elements"));
}

}  // namespace

void check_units(const std::vector<UnitInfo>& units, const std::string& what) {
  if (units.empty()) throw Error(ds::str(what, ": no units"));
  std::unordered_set<std::string> unit_names, param_names;
  for (size_t i = 0; i < units.size(); ++i) {
    const UnitInfo& u = units[i];
    std::string where = ds::str(what, ": units[", i, "]");
    if (u.name.empty() || !unit_names.insert(u.name).second)
      throw Error(ds::str(where, ".name: empty or repeated unit name \"", u.name, "\""));
    if (u.numel < 0 || u.padded_numel < u.numel)
      throw Error(ds::str(where, " (", u.name, "): numel ", u.numel, " and padded_numel ", u.padded_numel,
                          " are inconsistent"));
    int64_t previous_end = 0;
    for (size_t j = 0; j < u.slots.size(); ++j) {
      const SlotInfo& s = u.slots[j];
      std::string slot_where = ds::str(where, ".slots[", j, "]");
      check_slot(s, u, slot_where);
      if (s.offset < previous_end)
        throw Error(
            ds::str(slot_where, " (", s.name, "): offset ", s.offset, " overlaps the previous parameter"));
      previous_end = s.offset + s.numel;
      if (!param_names.insert(s.name).second)
        throw Error(ds::str(slot_where, ": parameter \"", s.name, "\" appears twice"));
    }
  }
}

int64_t parameter_count(const std::vector<UnitInfo>& units) {
  int64_t n = 0;
  for (const auto& u : units)
    for (const auto& s : u.slots) n += s.numel;
  return n;
}

std::string layer_states_name(int layer, int tp_rank) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "layer_%02d-model_%02d-model_states.pt", layer, tp_rank);
  return buf;
}

std::string model_states_name(int mp_rank) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "mp_rank_%02d_model_states.pt", mp_rank);
  return buf;
}

std::string optim_states_name(int dp_rank, int mp_rank) {
  char buf[96];
  std::snprintf(buf, sizeof buf, "zero_pp_rank_%d_mp_rank_%02d_optim_states.pt", dp_rank, mp_rank);
  return buf;
}

std::string rank_states_name(int dp_rank, int mp_rank) {
  char buf[96];
  std::snprintf(buf, sizeof buf, "dp_rank_%d_mp_rank_%02d_optim_rank_states.pt", dp_rank, mp_rank);
  return buf;
}

bool is_rank_states_name(const std::string& name) {
  int dp = -1, mp = -1;
  return std::sscanf(name.c_str(), "dp_rank_%d_mp_rank_%d_", &dp, &mp) == 2 && name == rank_states_name(dp, mp);
}

void check_tag(const std::string& tag) {
  if (tag.empty()) throw Error("empty checkpoint tag");
  if (tag == "." || tag == ".." || tag.size() > 255)
    throw Error(ds::str("checkpoint tag \"", tag, "\" is not usable as a directory name"));
  for (unsigned char c : tag)
    if (c == '/' || c < 0x20 || c == 0x7f)
      throw Error(ds::str("checkpoint tag \"", tag, "\" must be one path component of printable characters"));
}

}  // namespace ds::ckpt
