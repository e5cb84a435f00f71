// The per-unit compressed all-reduces of the 1-bit optimizers (OneBitAdam, ZeroOneAdam), with
// their error feedback: made on a unit's first compressed step, saved and restored per rank.
#pragma once

#include <ATen/core/Tensor.h>

#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "ds/comm/communicator.h"
#include "ds/compress/onebit.h"

namespace ds::optim {

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

 private:
  std::map<size_t, std::unique_ptr<compress::OneBitAllReduce>> units_;
  std::map<std::string, at::Tensor> saved_;
};

}  // namespace ds::optim
