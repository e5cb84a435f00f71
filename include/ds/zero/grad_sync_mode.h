// How gradients cross the data-parallel group before an optimizer step. The ZeRO stage picks
// the standard way; an optimizer may pick another per step (ds::optim::FlatOptimizer::grad_sync),
// e.g. 1-bit Adam exchanges compressed momentum itself and wants no gradient traffic.
#pragma once

namespace ds::zero {

enum class GradSync {
  kAllReduce,      // every rank ends with the averaged full gradient (stage 0)
  kReduceScatter,  // every rank ends with its chunk of the averaged gradient (stages 1-3)
  kNone,           // nothing crosses the wire: each rank keeps its own full gradient
};

inline const char* to_string(GradSync s) {
  switch (s) {
    case GradSync::kAllReduce: return "all-reduce";
    case GradSync::kReduceScatter: return "reduce-scatter";
    case GradSync::kNone: return "none";
  }
  return "?";
}

}  // namespace ds::zero
