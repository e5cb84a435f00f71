#include "ds/ckpt/reshape.h"

#include <algorithm>
#include <unordered_map>

#include "ds/common/error.h"

namespace ds::ckpt {

namespace {

struct SlotRef {
  int unit = 0;
  const SlotInfo* slot = nullptr;
};

std::unordered_map<std::string, SlotRef> index_slots(const std::vector<UnitInfo>& units) {
  std::unordered_map<std::string, SlotRef> index;
  for (size_t u = 0; u < units.size(); ++u)
    for (const auto& s : units[u].slots) index[s.name] = {int(u), &s};
  return index;
}

}  // namespace

std::vector<Request> requests_for_ranges(const std::vector<UnitInfo>& units,
                                         const std::vector<Range>& ranges) {
  DS_CHECK(units.size() == ranges.size(), ranges.size(), " ranges for ", units.size(), " units");
  std::vector<Request> out;
  for (size_t u = 0; u < units.size(); ++u) {
    const Range& r = ranges[u];
    DS_CHECK(r.offset >= 0 && r.length >= 0 && r.end() <= units[u].padded_numel, "range [", r.offset, ", ",
             r.end(), ") is outside unit ", units[u].name, " of ", units[u].padded_numel, " elements");
    for (const auto& s : units[u].slots) {
      int64_t begin = std::max(r.offset, s.offset), end = std::min(r.end(), s.offset + s.numel);
      if (begin >= end) continue;
      out.push_back({s.name, begin - s.offset, end - begin, int(u), begin - r.offset});
    }
  }
  return out;
}

std::vector<CopyOp> plan_copies(const std::vector<UnitInfo>& saved, const Partition& partition,
                                const std::vector<Request>& requests) {
  auto index = index_slots(saved);
  std::vector<CopyOp> plan;
  for (const auto& q : requests) {
    auto it = index.find(q.param);
    if (it == index.end()) throw Error(ds::str("the checkpoint has no parameter \"", q.param, "\""));
    const SlotInfo& s = *it->second.slot;
    int unit = it->second.unit;
    if (q.begin < 0 || q.length < 0 || q.begin > s.numel || q.length > s.numel - q.begin)
      throw Error(ds::str("request for elements [", q.begin, ", +", q.length, ") of ", q.param, " (", s.numel,
                          " elements)"));
    if (q.length == 0) continue;
    const int64_t n = saved[size_t(unit)].padded_numel;
    int64_t pos = s.offset + q.begin;  // position in the saved unit's flat buffer
    const int64_t end = pos + q.length;
    for (int part = partition_of(n, partition, pos); pos < end; ++part) {
      Range r = partition_range(n, partition, part);
      if (r.length == 0) continue;  // an empty part (more parts than elements)
      DS_CHECK(r.offset <= pos && pos < r.end(), "partition ", part, " [", r.offset, ", ", r.end(),
               ") misses ", pos);
      int64_t take = std::min(end, r.end()) - pos;
      plan.push_back({part, unit, pos - r.offset, q.target, q.dst_offset + (pos - s.offset - q.begin), take});
      pos += take;
    }
  }
  std::stable_sort(plan.begin(), plan.end(),
                   [](const CopyOp& a, const CopyOp& b) { return a.part < b.part; });
  return plan;
}

std::vector<int> parts_used(const std::vector<CopyOp>& plan) {
  std::vector<int> parts;
  for (const auto& op : plan)
    if (parts.empty() || parts.back() != op.part) parts.push_back(op.part);
  std::sort(parts.begin(), parts.end());
  parts.erase(std::unique(parts.begin(), parts.end()), parts.end());
  return parts;
}

void check_compatible(const std::vector<UnitInfo>& saved, const std::vector<UnitInfo>& model, bool whole) {
  auto saved_index = index_slots(saved);
  auto model_index = index_slots(model);
  for (const auto& u : model) {
    for (const auto& s : u.slots) {
      auto it = saved_index.find(s.name);
      if (it == saved_index.end())
        throw Error(ds::str("the checkpoint does not match the model: parameter ", s.name, " ",
                            shape_string(s.shape), " of the model is not in the checkpoint"));
      if (it->second.slot->shape != s.shape)
        throw Error(ds::str("the checkpoint does not match the model: parameter ", s.name, " has shape ",
                            shape_string(it->second.slot->shape), " in the checkpoint but ",
                            shape_string(s.shape), " in the model"));
    }
  }
  if (!whole) return;
  for (const auto& u : saved)
    for (const auto& s : u.slots)
      if (!model_index.count(s.name))
        throw Error(ds::str("the checkpoint does not match the model: the checkpoint's parameter ", s.name,
                            " ", shape_string(s.shape), " is not in the model"));
}

}  // namespace ds::ckpt
