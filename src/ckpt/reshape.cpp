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

namespace {

// How tensor parallelism cuts one parameter, in terms of the whole (unsplit) parameter.
struct Cut {
  int dim = -1;  // -1: every tensor rank holds it whole
  int groups = 1;
  std::vector<int64_t> whole;
};

[[noreturn]] void mismatch(const std::string& name, const std::string& why) {
  throw Error(ds::str("the checkpoint does not match the model: parameter ", name, " ", why));
}

// The cut of a parameter saved as `saved` (a slice of saved tensor rank 0) and held by the
// model as `model` (the slice of tensor rank t.rank of t.size); throws when they disagree.
Cut cut_of(const SlotInfo& saved, const SlotInfo& model, const TensorReslice& t) {
  const bool from_saved = t.saved_size > 1;
  Cut c{from_saved ? saved.split_dim : model.split_dim, from_saved ? saved.split_groups : model.split_groups,
        saved.shape};
  if (t.saved_size > 1 && t.size > 1 && (saved.split_dim != model.split_dim || saved.split_groups != model.split_groups))
    mismatch(saved.name, ds::str("is split along dimension ", saved.split_dim, " (", saved.split_groups,
                                 " blocks) in the checkpoint but along dimension ", model.split_dim, " (",
                                 model.split_groups, " blocks) in the model"));
  if (c.dim >= int(c.whole.size()) || c.groups < 1)
    mismatch(saved.name, ds::str("has split dimension ", c.dim, " in ", c.groups, " blocks, which its shape ",
                                 shape_string(c.whole), " does not have"));
  std::vector<int64_t> want = c.whole;
  if (c.dim >= 0) {
    c.whole[size_t(c.dim)] *= t.saved_size;
    want = c.whole;
    const int64_t n = c.whole[size_t(c.dim)], parts = int64_t(c.groups) * t.size;
    if (n % parts != 0)
      mismatch(saved.name, ds::str("(whole shape ", shape_string(c.whole), ") has ", n, " along dimension ", c.dim,
                                   c.groups > 1 ? ds::str(" in ", c.groups, " blocks") : std::string(),
                                   ", which ", t.size, " tensor-parallel ranks cannot split evenly"));
    want[size_t(c.dim)] = n / t.size;
  }
  if (model.shape != want)
    mismatch(saved.name, ds::str("has whole shape ", shape_string(c.whole), " in the checkpoint (saved by ",
                                 t.saved_size, " tensor ranks), so ", shape_string(want), " on each of ", t.size,
                                 ", but ", shape_string(model.shape), " in the model"));
  return c;
}

// Elements [q.begin, +q.length) of the model's slice of a parameter cut as `c`, as runs of
// the saved slices (each run stays inside one saved rank's slice and one block row range).
void reslice(const Request& q, const Cut& c, const TensorReslice& t, std::vector<std::vector<Request>>& out) {
  if (c.dim < 0) {
    out[0].push_back(q);
    return;
  }
  const size_t d = size_t(c.dim);
  int64_t inner = 1;
  for (size_t i = d + 1; i < c.whole.size(); ++i) inner *= c.whole[i];
  const int64_t block = c.whole[d] / c.groups;  // rows of one block of the whole parameter
  const int64_t mine = block / t.size, theirs = block / t.saved_size;
  const int64_t my_rows = mine * c.groups, their_rows = theirs * c.groups;  // along d in a slice
  int64_t pos = q.begin;
  const int64_t end = q.begin + q.length;
  while (pos < end) {
    const int64_t outer = pos / (my_rows * inner), row = (pos / inner) % my_rows, col = pos % inner;
    const int64_t g = row / mine, whole_row = t.rank * mine + row % mine;  // row inside block g
    const int s = int(whole_row / theirs);
    const int64_t their_row = g * theirs + whole_row % theirs;
    const int64_t stop_row = std::min((g + 1) * mine, g * mine + (int64_t(s) + 1) * theirs - t.rank * mine);
    const int64_t run_end = std::min(end, (outer * my_rows + stop_row) * inner);
    out[size_t(s)].push_back({q.param, (outer * their_rows + their_row) * inner + col, run_end - pos, q.target,
                              q.dst_offset + (pos - q.begin)});
    pos = run_end;
  }
}

}  // namespace

void check_compatible(const std::vector<UnitInfo>& saved, const std::vector<UnitInfo>& model, bool whole,
                      const TensorReslice& tensor) {
  auto saved_index = index_slots(saved);
  auto model_index = index_slots(model);
  for (const auto& u : model) {
    for (const auto& s : u.slots) {
      auto it = saved_index.find(s.name);
      if (it == saved_index.end())
        throw Error(ds::str("the checkpoint does not match the model: parameter ", s.name, " ",
                            shape_string(s.shape), " of the model is not in the checkpoint"));
      const SlotInfo& theirs = *it->second.slot;
      if (!tensor.same() || (tensor.size > 1 && (theirs.split_dim != s.split_dim || theirs.split_groups != s.split_groups))) {
        cut_of(theirs, s, tensor);  // throws for a split that disagrees
      } else if (it->second.slot->shape != s.shape) {
        throw Error(ds::str("the checkpoint does not match the model: parameter ", s.name, " has shape ",
                            shape_string(it->second.slot->shape), " in the checkpoint but ",
                            shape_string(s.shape), " in the model"));
      }
    }
  }
  if (!whole) return;
  for (const auto& u : saved)
    for (const auto& s : u.slots)
      if (!model_index.count(s.name))
        throw Error(ds::str("the checkpoint does not match the model: the checkpoint's parameter ", s.name,
                            " ", shape_string(s.shape), " is not in the model"));
}

std::vector<std::vector<Request>> reslice_requests(const std::vector<UnitInfo>& saved,
                                                   const std::vector<UnitInfo>& model, const TensorReslice& tensor,
                                                   const std::vector<Request>& requests) {
  DS_CHECK(tensor.saved_size >= 1 && tensor.size >= 1 && tensor.rank >= 0 && tensor.rank < tensor.size,
           "tensor rank ", tensor.rank, " of ", tensor.size, " (saved by ", tensor.saved_size, ")");
  auto saved_index = index_slots(saved);
  auto model_index = index_slots(model);
  std::unordered_map<std::string, Cut> cuts;
  std::vector<std::vector<Request>> out(size_t(tensor.saved_size));
  for (const auto& q : requests) {
    auto cut = cuts.find(q.param);
    if (cut == cuts.end()) {
      auto s = saved_index.find(q.param);
      auto m = model_index.find(q.param);
      if (s == saved_index.end()) throw Error(ds::str("the checkpoint has no parameter \"", q.param, "\""));
      DS_CHECK(m != model_index.end(), "request for ", q.param, ", which the model does not have");
      cut = cuts.emplace(q.param, cut_of(*s->second.slot, *m->second.slot, tensor)).first;
    }
    reslice(q, cut->second, tensor, out);
  }
  return out;
}

}  // namespace ds::ckpt
