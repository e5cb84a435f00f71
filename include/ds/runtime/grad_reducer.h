// GradReducer: averages gradients over the data-parallel ranks while backward still runs.
//
// A post-hook on every parameter's AccumulateGrad node counts the unit's parameters whose
// gradient has landed; when a unit is complete (and this micro-batch ends an accumulation
// window) its flat gradient is sent off in buckets of at most `bucket_elements`, in the
// communication dtype, on the communicator's worker thread, while autograd moves on to the
// earlier layers. finish() waits for everything, reduces units whose parameters got no
// gradient, and leaves the averaged fp32 gradient in every unit.
#pragma once

#include <ATen/core/Tensor.h>

#include <memory>
#include <vector>

#include "ds/comm/communicator.h"
#include "ds/runtime/flat_unit.h"

namespace ds {

struct GradReducerOptions {
  int64_t bucket_elements = 500'000'000;
  at::ScalarType comm_dtype = at::kFloat;  // bf16/fp16 halve the bytes on the wire
  bool overlap = true;                      // false: reduce everything in finish()
  double predivide_factor = 1.0;            // divide before, multiply after (fp16 range)
};

class GradReducer {
 public:
  GradReducer(std::vector<FlatUnit*> units, std::shared_ptr<comm::Communicator> comm, GradReducerOptions options);
  ~GradReducer();
  GradReducer(const GradReducer&) = delete;
  GradReducer& operator=(const GradReducer&) = delete;

  // Called before each backward; `boundary` says whether this micro-batch ends the window.
  void begin_backward(bool boundary);
  // Waits for all reductions of this window (launching those not yet launched).
  void finish();
  // Seconds the last finish() spent waiting for communication.
  double last_wait_seconds() const { return last_wait_seconds_; }

 private:
  struct Shared;
  struct Bucket {
    at::Tensor grad_slice;  // view into the unit's flat fp32 gradient
    at::Tensor wire;        // what goes on the wire (the slice itself when fp32)
    comm::Work work;
  };
  void on_param_ready(size_t unit);
  void launch(size_t unit);

  std::vector<FlatUnit*> units_;
  std::shared_ptr<comm::Communicator> comm_;
  GradReducerOptions options_;
  std::shared_ptr<Shared> shared_;  // what the hooks see; detached in the destructor
  std::vector<std::shared_ptr<void>> accumulators_;  // AccumulateGrad nodes carrying our hooks
  std::vector<int> ready_count_;
  std::vector<bool> launched_;
  std::vector<std::vector<Bucket>> buckets_;
  bool boundary_ = true;
  double last_wait_seconds_ = 0.0;
};

}  // namespace ds
