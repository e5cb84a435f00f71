// Runs a pipeline schedule (schedule.h) on one stage: each instruction mapped to code. The
// model is given as callbacks, so the executor knows nothing of layers, optimizers or ZeRO;
// the batch-level instructions (tied and data-parallel gradient reductions, the optimizer
// step) call hooks the caller provides.
//
//   ds::pipe::Executor ex({ds::pipe::Kind::kOneFOneB, stages, micro_batches}, groups.pipe);
//   ds::pipe::StageModel m{
//       [&](int chunk, const at::Tensor& x) { return my_layers[chunk]->forward(x); },
//       [&](const at::Tensor& out, const at::Tensor& y) { return at::cross_entropy_loss(out, y); }};
//   double loss = ex.run(m, [&](int i) { return ds::pipe::MicroBatch{inputs[i], labels[i]}; });
//
// Training: each micro-batch's loss is divided by the number of micro-batches before its
// backward, so the gradients left in the parameters are those of the batch mean (added to
// what they held), unless BatchHooks replace the backward. Inference (Kind::kInference): forwards under no_grad. Either way run()
// returns the mean loss over the micro-batches on every stage (the last stage broadcasts it
// over the pipe group).
#pragma once

#include <ATen/core/Tensor.h>

#include <functional>
#include <memory>

#include "ds/comm/communicator.h"
#include "ds/pipe/schedule.h"

namespace ds::pipe {

struct MicroBatch {
  at::Tensor inputs, labels;
};
// Micro-batch i of the current batch; called on the first virtual stage (for the inputs) and
// on the last (for the labels), so it must return the same micro-batch on both.
using DataSource = std::function<MicroBatch(int micro_batch)>;

struct StageModel {
  // Model chunk `chunk` of this stage (virtual stage chunk * stages + stage). On the first
  // virtual stage `x` is the micro-batch's inputs, elsewhere the previous virtual stage's output.
  std::function<at::Tensor(int chunk, const at::Tensor& x)> forward;
  // On the last virtual stage: the loss of one micro-batch (a scalar) from the output and labels.
  std::function<at::Tensor(const at::Tensor& output, const at::Tensor& labels)> loss;
};

struct BatchHooks {  // unset hooks do nothing
  std::function<void()> reduce_tied_grads, reduce_grads, optimizer_step;
  // Replace the executor's own backward (the loss divided by the number of micro-batches, then
  // autograd) on the last virtual stage and on the others: the engine's, which scales by its
  // accumulation steps and loss scale and counts micro-steps. Set both or neither.
  std::function<void(const at::Tensor& loss)> backward_loss;
  std::function<void(const at::Tensor& output, const at::Tensor& grad)> backward_output;
};

// Activations and their gradients split over the tensor group on their way between stages
// (StageLink): DeepSpeed's pipeline.pipe_partitioned and grad_partitioned.
struct SplitMessages {
  std::shared_ptr<comm::Communicator> tensor;  // null or of size 1: nothing is split
  bool activations = false, gradients = false;
};

class Executor {
 public:
  // This stage is pipe->rank(); pipe->size() must equal spec.stages.
  Executor(ScheduleSpec spec, std::shared_ptr<comm::Communicator> pipe, SplitMessages split = {});
  ~Executor();

  double run(const StageModel& model, const DataSource& data, const BatchHooks& hooks = {});

  int stage() const { return stage_; }
  const ScheduleSpec& spec() const { return spec_; }

 private:
  struct Impl;
  ScheduleSpec spec_;
  std::shared_ptr<comm::Communicator> pipe_;
  SplitMessages split_;
  int stage_;
  std::vector<Step> steps_;
};

}  // namespace ds::pipe
