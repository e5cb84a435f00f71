// GradReducer: averages gradients over the data-parallel ranks while backward still runs.
//
// A post-hook on every parameter's AccumulateGrad node counts the unit's parameters whose
// gradient has landed; when a unit is complete its gradient goes to the communicator (on
// its worker thread) while autograd moves on to the earlier layers. Parameters that got no
// gradient are reduced in finish(), so an unused parameter cannot hang a step.
//
// Two ways, chosen by the ZeRO stage:
//  * AllReduce (stage 0): on the last micro-batch of an accumulation window, each unit's
//    flat gradient is all-reduced in buckets of `bucket_elements`; finish() leaves the
//    averaged gradient in the unit.
//  * ReduceScatter (stages 1, 2): each unit is reduce-scattered (a unit is a bucket) and this
//    rank's averaged chunk is added to `shards[u]`. Stage 1 does it on the last micro-batch
//    from the unit's persistent gradient; stage 2 on every micro-batch, from gradients the
//    unit packs and releases (FlatUnit without persistent grads).
#pragma once

#include <ATen/core/Tensor.h>

#include <functional>
#include <memory>
#include <vector>

#include "ds/comm/communicator.h"
#include "ds/runtime/flat_unit.h"

namespace ds {

struct GradReducerOptions {
  enum class Mode { AllReduce, ReduceScatter };
  Mode mode = Mode::AllReduce;
  bool every_micro_batch = false;           // reduce each micro-batch (stage 2), not only the last
  bool overlap = true;                      // launch from the hooks during backward (else in finish)
  // AllReduce: the bucket size. ReduceScatter (a unit is a bucket): at most this many packed
  // gradient elements wait on the wire; beyond it the oldest units are settled first.
  int64_t bucket_elements = 500'000'000;
  at::ScalarType comm_dtype = at::kFloat;   // bf16/fp16 halve the bytes on the wire
  double predivide_factor = 1.0;            // divide before, multiply after (fp16 range)
  // ReduceScatter: called with the unit's index once its gradients are packed and on the
  // wire (ZeRO stage 3 releases the gathered unit then).
  std::function<void(size_t)> on_packed;
};

class GradReducer {
 public:
  // ReduceScatter: shards[u] is this rank's fp32 accumulator for unit u (chunk_of layout).
  GradReducer(std::vector<FlatUnit*> units, std::shared_ptr<comm::Communicator> comm, GradReducerOptions options,
              std::vector<at::Tensor> shards = {});
  ~GradReducer();
  GradReducer(const GradReducer&) = delete;
  GradReducer& operator=(const GradReducer&) = delete;

  // Called before each backward; `boundary` says whether this micro-batch ends the window.
  void begin_backward(bool boundary);
  // After each backward: reduces what did not reduce itself (units with unused parameters)
  // and, when this micro-batch is reduced, waits for it. Stage 0 and 1 call it only at the
  // boundary (their gradients accumulate locally in between).
  void finish();
  bool reduces_this_micro_batch() const { return boundary_ || options_.every_micro_batch; }

 private:
  struct Shared;
  struct Bucket {
    size_t unit = 0;
    at::Tensor grad_slice;  // AllReduce: view into the unit's flat fp32 gradient
    at::Tensor wire;        // what goes on the wire
    at::Tensor wire_out;    // ReduceScatter: this rank's chunk, in the wire dtype
    comm::Work work;
  };
  void on_param_ready(size_t unit);
  void launch(size_t unit);
  void settle(Bucket& b);

  std::vector<FlatUnit*> units_;
  std::shared_ptr<comm::Communicator> comm_;
  GradReducerOptions options_;
  std::vector<at::Tensor> shards_;
  std::shared_ptr<Shared> shared_;  // what the hooks see; detached in the destructor
  std::vector<std::shared_ptr<void>> accumulators_;  // AccumulateGrad nodes carrying our hooks
  std::vector<int> ready_count_;
  std::vector<bool> launched_;
  std::vector<Bucket> in_flight_;
  size_t settled_ = 0;          // in_flight_[0, settled_) are done (ReduceScatter's bound)
  int64_t wire_elements_ = 0;   // ReduceScatter: packed gradients still waiting on the wire
  bool boundary_ = true;
};

}  // namespace ds
