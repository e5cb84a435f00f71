// The per-unit compressed all-reduces of the 1-bit optimizers (OneBitAdam, ZeroOneAdam,
// OneBitLamb), with their error feedback: made on a unit's first compressed step, saved and
// restored per rank; and what OneBitAdam and OneBitLamb share around them (CompressedMomentum).
#pragma once

#include <ATen/core/Tensor.h>

#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "ds/comm/communicator.h"
#include "ds/compress/onebit.h"
#include "ds/optim/optimizer.h"
#include "ds/zero/grad_sync_mode.h"

namespace ds::optim {

// A unit's whole momentum on this rank (its real elements), rebuilt from segment s's exp_avg
// (state 0): exp_avg itself when this rank holds all of the unit (stage 0), else every rank's
// shard all-gathered over `group` (ZeRO 1-2: they are slices of the same compressed mean).
// zero_variance marks where exp_avg_sq (state 1) is 0: an element that never had a gradient
// keeps a zero momentum (compression cannot send an exact 0, and m / (sqrt(0) + eps) would
// throw it away); DeepSpeed's 1-bit optimizers ask the user for this mask (exp_avg_mask).
struct WholeMomentum {
  at::Tensor momentum;
  at::Tensor zero_variance;  // bool
  bool owned = false;        // momentum is a copy (else a view of exp_avg)
};
WholeMomentum whole_momentum(const Segment& s, comm::Communicator& group, const char* optimizer);

class CompressedUnits {
 public:
  using NamedTensors = std::vector<std::pair<std::string, at::Tensor>>;

  // Unit u's compressed all-reduce of `numel` elements over `group`; null on one rank (nothing
  // is compressed there). Made on first use, with the error feedback load() kept for it.
  compress::OneBitAllReduce* get(size_t unit, int64_t numel, comm::Communicator& group);
  void zero_errors();
  // "unit<u>.worker_error" and "unit<u>.server_error" of every unit made so far.
  void append_states(NamedTensors& out) const;
  // Keeps the entries of `states` named as append_states() names them until their unit is made.
  void load(const NamedTensors& states);
  void reset();
  // The error feedback's bytes (loaded ones waiting for their unit included).
  int64_t bytes() const;
  // What the error feedback of a unit of `numel` elements on `ranks` ranks comes to.
  static int64_t bytes_of_unit(int64_t numel, int ranks);

 private:
  std::map<size_t, std::unique_ptr<compress::OneBitAllReduce>> units_;
  std::map<std::string, at::Tensor> saved_;
};

// The base of 1-bit Adam and 1-bit Lamb: a warm-up of freeze_step steps on the gradients the
// ZeRO stage averages, then no gradient sync (GradSync::kNone): each rank folds its own
// gradient into each unit's whole momentum, which crosses the data group compressed. Keeps
// that momentum per unit and the error feedback (saved per rank).
class CompressedMomentum : public FlatOptimizer {
 public:
  zero::GradSync grad_sync(zero::GradSync standard, int64_t next_step) const override {
    return compressed(next_step) ? zero::GradSync::kNone : standard;
  }
  std::string phase(int64_t step) const override;
  std::vector<std::pair<std::string, at::Tensor>> rank_states() const override;
  void load_rank_states(const std::vector<std::pair<std::string, at::Tensor>>& states, const SegmentVisitor&) override;
  void reset_rank_states() override;
  int64_t held_bytes() const override;
  bool sends_compressed_momentum() const override { return true; }
  // The whole momentum when this rank holds a shard, the zero-variance mask and the error feedback.
  int64_t held_bytes_of_unit(int64_t numel, int64_t padded, int64_t own, int ranks) const override;

 protected:
  // `label`: how messages and the progress line name the optimizer ("1-bit Adam").
  CompressedMomentum(OptimizerConfig c, std::string label);
  bool compressed(int64_t step) const { return step > config_.freeze_step; }
  // Throws unless the step's gradients are each rank's own.
  void check_own_gradients(const StepContext& ctx) const;

  // The compressed phase's per-unit state on this rank.
  struct UnitComm {
    compress::OneBitAllReduce* reduce = nullptr;  // in errors_; null on one rank
    WholeMomentum whole;
  };
  UnitComm& unit_comm(const Segment& s, comm::Communicator& group);

  std::string label_;
  std::map<size_t, UnitComm> units_;  // by unit, from the first compressed step
  CompressedUnits errors_;
};

}  // namespace ds::optim
