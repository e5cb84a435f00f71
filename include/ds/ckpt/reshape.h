// Reshaping: which elements of which saved file go where when a checkpoint saved under one
// layout (N parts, some units and padding) is loaded under another (M ranks, perhaps other
// units or padding). Parameters are matched by name; every optimizer state this engine keeps
// is elementwise (Adam's moments, SGD's momentum), so the same copy plan moves the fp32
// masters and each state tensor. Pure functions: no files, no tensors.
//
//   // rank r of M loads its ZeRO shard of every unit of the current model:
//   std::vector<ds::ckpt::Range> want;
//   for (auto& u : model_units) want.push_back(ds::ckpt::partition_range(u.padded_numel, {scheme, M}, r));
//   auto requests = ds::ckpt::requests_for_ranges(model_units, want);
//   auto plan = ds::ckpt::plan_copies(saved_units, saved_partition, requests);
//   // for each op: target[op.target][op.dst_offset ...] = file[op.part].unit[op.src_unit][op.src_offset ...]
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "ds/ckpt/layout.h"

namespace ds::ckpt {

// Elements [begin, begin + length) of parameter `param` (flattened) go to target `target`
// at element `dst_offset`.
struct Request {
  std::string param;
  int64_t begin = 0;
  int64_t length = 0;
  int target = 0;
  int64_t dst_offset = 0;
};

// One contiguous copy: from saved part `part`, the tensor of saved unit `src_unit` at element
// `src_offset` (relative to that part's range), to target `target` at `dst_offset`.
struct CopyOp {
  int part = 0;
  int src_unit = 0;
  int64_t src_offset = 0;
  int target = 0;
  int64_t dst_offset = 0;
  int64_t length = 0;
  bool operator==(const CopyOp& o) const {
    return part == o.part && src_unit == o.src_unit && src_offset == o.src_offset && target == o.target &&
           dst_offset == o.dst_offset && length == o.length;
  }
};

// The requests that fill `ranges[i]` of target unit i's flat buffer (targets numbered like
// the units; dst_offset relative to the range's start). Padding elements get no request.
std::vector<Request> requests_for_ranges(const std::vector<UnitInfo>& units,
                                         const std::vector<Range>& ranges);

// The copies that satisfy `requests` from a checkpoint with `saved` units cut by `partition`,
// sorted by part (so a loader reads each file once). Throws ds::Error for a parameter the
// checkpoint does not have or a request outside the parameter.
std::vector<CopyOp> plan_copies(const std::vector<UnitInfo>& saved, const Partition& partition,
                                const std::vector<Request>& requests);

// The parts (files) a plan reads, ascending.
std::vector<int> parts_used(const std::vector<CopyOp>& plan);

// Tensor parallelism at load time: the checkpoint was saved by `saved_size` tensor ranks
// and the model is tensor rank `rank` of `size`. Each split parameter (SlotInfo::split_dim,
// from whichever side has more than one rank) is cut into `size` slices of each of its
// `split_groups` blocks; replicated parameters are read from saved tensor rank 0.
struct TensorReslice {
  int saved_size = 1;
  int size = 1;
  int rank = 0;
  bool same() const { return saved_size == size; }
};

// Throws ds::Error("the checkpoint does not match the model: ...") naming the first parameter
// (in model order) that is missing or has another shape, with both shapes; then the first
// checkpoint parameter the model lacks. Unit grouping and padding may differ.
// whole = false: `model` is part of a model (a pipeline stage); only its own parameters are checked.
// With a tensor size other than the saved one (`tensor`), `saved` holds saved tensor rank 0's
// slots (Manifest::units_of_tensor_rank(0)) and a split parameter's shape must be the
// model's slice of the whole; a dimension the new size does not divide is named.
void check_compatible(const std::vector<UnitInfo>& saved, const std::vector<UnitInfo>& model, bool whole = true,
                      const TensorReslice& tensor = {});

// Requests on the model's slices (rank `tensor.rank` of `tensor.size`) as requests on the
// saved tensor ranks' slices: out[s] for saved tensor rank s, each cut where a saved slice
// ends, with the target and dst_offset carried over. `saved`: saved tensor rank 0's units,
// already checked by check_compatible.
std::vector<std::vector<Request>> reslice_requests(const std::vector<UnitInfo>& saved,
                                                   const std::vector<UnitInfo>& model, const TensorReslice& tensor,
                                                   const std::vector<Request>& requests);

}  // namespace ds::ckpt
