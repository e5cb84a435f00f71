// Lamb (src/optim/lamb.cpp), made by make_optimizer for type "Lamb", and what optimizers built
// on it (1-bit Lamb) share with it: the numbering of the step's parameter tensors, their
// pieces within a segment, and the reduction of per-tensor sums over the tensor group.
#pragma once

#include <functional>
#include <memory>
#include <vector>

#include "ds/optim/optimizer.h"

namespace ds::optim {

// `on_ratios`, when given, receives each step_all()'s trust ratios (clamped), indexed as
// TensorIndex numbers the tensors.
std::unique_ptr<FlatOptimizer> make_lamb(const OptimizerConfig& config,
                                         std::function<void(const std::vector<double>&)> on_ratios = {});

// The step's parameter tensors numbered 0.. in unit order, then slot order: tensor t of unit k
// is first[k] + t, the same on every rank of the data group.
struct TensorIndex {
  explicit TensorIndex(const StepContext& ctx);
  size_t count() const { return first.back(); }
  std::vector<size_t> first;  // units + 1 entries
};

// A run [begin, end) of one tensor's elements within a segment (the segment's own numbering).
struct TensorPiece {
  size_t tensor;  // TensorIndex number
  int64_t begin, end;
};
// Elements per piece: one task of the element passes over a thread pool (128 KiB of each array).
constexpr int64_t kPieceElements = 1 << 15;
// [begin, end) of tensor `tensor` in pieces of at most kPieceElements, appended to `out`.
void append_pieces(size_t tensor, int64_t begin, int64_t end, std::vector<TensorPiece>& out);
// The pieces of every tensor overlapping segment s, in order. The padding after a unit's last
// tensor is no tensor's.
std::vector<TensorPiece> tensor_pieces(const StepContext& ctx, const Segment& s, const TensorIndex& index);

// values[.., t] of the tensors split over ctx's tensor group, reduced over it with `op` (each
// rank held one slice); the replicated tensors' values are whole already. No-op without a
// tensor group.
void reduce_over_tensor_group(const StepContext& ctx, const TensorIndex& index, at::Tensor& values,
                              comm::ReduceOp op);

}  // namespace ds::optim
