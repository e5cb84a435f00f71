#include "ds/pipe/executor.h"

#include <ATen/ATen.h>
#include <torch/autograd.h>

#include <map>
#include <optional>
#include <utility>

#include "ds/common/error.h"
#include "ds/pipe/link.h"

namespace ds::pipe {

// One batch on one stage: what each micro-batch chunk holds between its instructions.
struct Executor::Impl {
  struct Slot {
    MicroBatch batch;     // first virtual stage: inputs; last: labels
    at::Tensor input;     // received activation (a leaf that collects its gradient)
    at::Tensor output;    // this chunk's output, kept for the backward
    at::Tensor loss;      // last virtual stage: the loss, kept for the backward
    at::Tensor grad;      // received gradient of `output`
  };

  const ScheduleSpec& spec;
  const int stage, last;
  const bool training;
  const StageModel& model;
  const DataSource& data;
  const BatchHooks& hooks;
  const SplitMessages& split;
  StageLink link;
  std::map<std::pair<int, int>, Slot> slots;  // (micro-batch, chunk)
  double loss_sum = 0;

  Impl(const Executor& ex, const StageModel& m, const DataSource& d, const BatchHooks& h)
      : spec(ex.spec_), stage(ex.stage_), last(ex.spec_.stages * ex.spec_.virtual_stages - 1),
        training(ex.spec_.kind != Kind::kInference), model(m), data(d), hooks(h), split(ex.split_),
        link(ex.pipe_, ex.split_.tensor) {}

  int virt(const Instruction& in) const { return in.chunk * spec.stages + stage; }
  // One tag per (kind, receiving virtual stage): messages of one kind to one chunk keep their order.
  int tag(bool grad, int receiver_virt) const { return (grad ? last + 1 : 0) + receiver_virt; }

  void execute(const Instruction& in) {
    auto call = [](const std::function<void()>& hook) {
      if (hook) hook();
    };
    switch (in.op) {  // the batch-level instructions: no micro-batch, no slot
      case Op::kReduceTiedGrads: return call(hooks.reduce_tied_grads);
      case Op::kReduceGrads: return call(hooks.reduce_grads);
      case Op::kOptimizerStep: return call(hooks.optimizer_step);
      default: break;
    }
    Slot& s = slots[{in.micro_batch, in.chunk}];
    const int v = virt(in);
    switch (in.op) {
      case Op::kLoadMicroBatch:
        s.batch = data(in.micro_batch);
        break;
      case Op::kRecvActivation:
        s.input = link.recv(in.peer, tag(false, v), split.activations);
        if (training && s.input.is_floating_point()) s.input.requires_grad_(true);
        break;
      case Op::kForward:
        forward(s, v, in);
        break;
      case Op::kSendActivation:
        link.send(s.output, in.peer, tag(false, v + 1), split.activations ? "pipeline.pipe_partitioned" : nullptr);
        if (!training) slots.erase({in.micro_batch, in.chunk});
        break;
      case Op::kRecvGrad:
        s.grad = link.recv(in.peer, tag(true, v), split.gradients);
        break;
      case Op::kBackward:
        if (v == last) {
          if (hooks.backward_loss) hooks.backward_loss(s.loss);
          else (s.loss / double(spec.micro_batches)).backward();
        } else if (s.output.requires_grad()) {
          if (hooks.backward_output) hooks.backward_output(s.output, s.grad);
          else torch::autograd::backward({s.output}, {s.grad});
        }
        s.output = s.loss = s.grad = at::Tensor();
        if (v == 0) slots.erase({in.micro_batch, in.chunk});
        break;
      case Op::kSendGrad: {
        const at::Tensor g = s.input.grad().defined() ? s.input.grad() : at::zeros_like(s.input);
        link.send(g, in.peer, tag(true, v - 1), split.gradients ? "pipeline.grad_partitioned" : nullptr);
        slots.erase({in.micro_batch, in.chunk});
        break;
      }
      default:  // batch-level, handled above
        break;
    }
  }

  void forward(Slot& s, int v, const Instruction& in) {
    const at::Tensor& x = v == 0 ? s.batch.inputs : s.input;
    if (!x.defined())
      throw Error(ds::str("pipeline stage ", stage, ": forward of micro-batch ", in.micro_batch,
                          " without its input (the data source returned no inputs?)"));
    at::Tensor out = model.forward(in.chunk, x);
    if (v != last) {
      s.output = out;
      return;
    }
    if (!s.batch.labels.defined() || !model.loss)
      throw Error(ds::str("pipeline stage ", stage, ": the last stage needs labels from the data source and a loss"));
    at::Tensor loss = model.loss(out, s.batch.labels);
    if (loss.numel() != 1) throw Error(ds::str("pipeline: the loss of a micro-batch must be a scalar, got ", loss.sizes()));
    loss_sum += loss.item<double>();
    if (training) s.loss = loss;
    else slots.erase({in.micro_batch, in.chunk});
  }
};

Executor::Executor(ScheduleSpec spec, std::shared_ptr<comm::Communicator> pipe, SplitMessages split)
    : spec_(spec), pipe_(std::move(pipe)), split_(std::move(split)), stage_(pipe_->rank()) {
  if (!pipe_) throw Error("pipeline executor: no pipe group");
  if (pipe_->size() != spec_.stages)
    throw ConfigError(ds::str("pipeline: ", spec_.stages, " stages but the pipe group has ", pipe_->size(), " ranks"));
  steps_ = schedule(spec_, stage_);
}

Executor::~Executor() = default;

double Executor::run(const StageModel& model, const DataSource& data, const BatchHooks& hooks) {
  Impl impl(*this, model, data, hooks);
  {
    std::optional<at::NoGradGuard> no_grad;
    if (!impl.training) no_grad.emplace();
    for (const Step& step : steps_)
      for (const Instruction& in : step) impl.execute(in);
  }
  impl.link.wait_sends();
  at::Tensor loss = at::full({1}, impl.loss_sum / spec_.micro_batches, at::kDouble);
  pipe_->broadcast(loss, spec_.stages - 1).wait();
  return loss.item<double>();
}

}  // namespace ds::pipe
