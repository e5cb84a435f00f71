// GradReducer: averages gradients over the data-parallel ranks while backward still runs.
//
// A post-hook on every parameter's AccumulateGrad node counts the unit's parameters whose
// gradient has landed; when a unit is complete its gradient goes to the communicator (on
// its worker thread) while autograd moves on to the earlier layers. Parameters that got no
// gradient are reduced in finish(), so an unused parameter cannot hang a step.
//
// The way is chosen per backward (begin_backward), normally by the ZeRO stage:
//  * kAllReduce (stage 0): on the last micro-batch of an accumulation window, each unit's
//    flat gradient is all-reduced in buckets of `bucket_elements`; finish() leaves the
//    averaged gradient in the unit.
//  * kReduceScatter (stages 1-3): each unit is reduce-scattered (a unit is a bucket) and this
//    rank's averaged chunk is added to `shards[u]`. Stage 1 does it on the last micro-batch
//    from the unit's persistent gradient; stages 2-3 on every micro-batch, from gradients the
//    unit packs and releases (FlatUnit without persistent grads).
//    With `quantize_group` (zero_quantized_gradients, ZeRO++'s qgZ) the reduce-scatter sends
//    int8 blocks by one all-to-all (ds::compress::QuantizedReduceScatter): each rank's
//    contribution is quantized once and summed in fp32 by the chunk's owner.
//  * kNone: nothing is sent; the units' persistent gradients keep this rank's own sum (an
//    optimizer that communicates itself, e.g. 1-bit Adam, reads them).
#pragma once

#include <ATen/core/Tensor.h>

#include <functional>
#include <memory>
#include <vector>

#include "ds/comm/communicator.h"
#include "ds/compress/quantize.h"
#include "ds/zero/flat_unit.h"
#include "ds/zero/grad_sync_mode.h"

namespace ds::zero {

struct GradReducerOptions {
  bool every_micro_batch = false;           // reduce-scatter each micro-batch (stages 2-3), not only the last
  bool overlap = true;                      // launch from the hooks during backward (else in finish)
  // AllReduce: the bucket size. ReduceScatter (a unit is a bucket): at most this many packed
  // gradient elements wait on the wire; beyond it the oldest units are settled first.
  int64_t bucket_elements = 500'000'000;
  at::ScalarType comm_dtype = at::kFloat;   // bf16/fp16 halve the bytes on the wire
  double predivide_factor = 1.0;            // divide before, multiply after (fp16 range)
  int64_t quantize_group = 0;               // kReduceScatter: int8 blocks of this many values (0: exact)
  // kReduceScatter: called with the unit's index once its gradients are packed and on the
  // wire (ZeRO stage 3 releases the gathered unit then).
  std::function<void(size_t)> on_packed;
};

class GradReducer {
 public:
  // shards[u]: this rank's fp32 gradient accumulator for unit u (chunk_of layout over
  // `comm`, the data-parallel group), for kReduceScatter; empty when it is never used.
  GradReducer(std::vector<FlatUnit*> units, std::shared_ptr<comm::Communicator> comm, GradReducerOptions options,
              std::vector<at::Tensor> shards = {});
  ~GradReducer();
  GradReducer(const GradReducer&) = delete;
  GradReducer& operator=(const GradReducer&) = delete;

  // Called before each backward; `boundary` says whether this micro-batch ends the window.
  // kAllReduce and kNone need units with persistent gradients, kReduceScatter the shards.
  void begin_backward(bool boundary, GradSync sync);
  // After each backward: reduces what did not reduce itself (units with unused parameters)
  // and, when this micro-batch is reduced, waits for it. Stage 0 and 1 call it only at the
  // boundary (their gradients accumulate locally in between).
  void finish();
  bool reduces_this_micro_batch() const {
    return sync_ != GradSync::kNone && (boundary_ || (sync_ == GradSync::kReduceScatter && options_.every_micro_batch));
  }
  GradSync sync() const { return sync_; }
  // Seconds this process has spent waiting for reductions to land (for wall_clock_breakdown).
  double wait_seconds() const { return wait_s_; }

 private:
  struct Shared;
  struct Bucket {
    size_t unit = 0;
    at::Tensor grad_slice;  // kAllReduce: view into the unit's flat gradient
    at::Tensor wire;        // what goes on the wire
    at::Tensor wire_out;    // kReduceScatter: this rank's chunk, in the wire dtype
    comm::Work work;
    compress::QuantizedReduceScatter quantized;  // kReduceScatter with quantize_group (b.wire freed once sent)
    int64_t elements = 0;   // kReduceScatter: the packed gradient's, counted against bucket_elements
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
  int64_t wire_elements_ = 0;   // kReduceScatter: packed gradients still waiting on the wire
  bool boundary_ = true;
  GradSync sync_ = GradSync::kAllReduce;
  double wait_s_ = 0;
};

}  // namespace ds::zero
