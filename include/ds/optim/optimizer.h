// Optimizers over flat fp32 master tensors (one per unit, or this rank's chunk of it under
// ZeRO). The state lives in tensors the engine owns (so ZeRO can shard it, offload can swap
// it and checkpoints can save it); the optimizer object holds hyper-parameters (the config's
// `optimizer` section), declares its states, and keeps what is neither elementwise nor
// sharded (per-rank error feedback, per-tensor scalars) with hooks to save and restore it.
//
//   auto opt = ds::optim::make_optimizer(config.optimizer);
//   auto state = opt->init_state(master.numel());
//   opt->step(master, grad, state, {/*step=*/1, /*lr=*/1e-3});
//
// The engine calls step_all() once per optimizer step. Its default runs step() on every
// segment of this rank's part of the model (a unit, or a piece of one when states are swapped
// in sub-groups); an optimizer that needs the whole step — to communicate over the
// data-parallel group, as 1-bit Adam does — overrides it, and may ask for another gradient
// sync than the ZeRO stage's (grad_sync()).
#pragma once

#include <ATen/core/Tensor.h>

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "ds/comm/communicator.h"
#include "ds/config/optimizer.h"
#include "ds/zero/grad_sync_mode.h"

namespace ds::zero {
struct ParamSlot;
}

namespace ds::optim {

// How a state tensor relates to the master it belongs to.
struct StateSpec {
  enum class Kind {
    // One value per master element: sharded, swapped to disk and reshaped across world sizes
    // with the master, saved under `name` (torch.optim's names: exp_avg, exp_avg_sq, ...).
    kElementwise,
    // Any length (e.g. 1/N of the master: a server's error feedback); kept in memory, not saved:
    // a loaded checkpoint starts it from init_state() again.
    kResetOnLoad,
  };
  std::string name;
  Kind kind = Kind::kElementwise;
};

// Where the updated weights go in the working precision: `dst` (same length as the master,
// bf16/fp16, or fp32 holding values rounded to `round_to`).
struct WorkingCopy {
  at::Tensor dst;
  at::ScalarType round_to = at::kFloat;
};

struct StepArgs {
  int64_t step = 1;  // this optimizer's applied steps, from 1 (bias correction)
  double lr = 0.0;
  std::optional<double> beta1;  // OneCycle's momentum cycling, when the schedule has one
};

// A piece of this rank's work: elements [offset, offset + master.numel()) of unit `unit`'s
// part on this rank.
struct Segment {
  size_t unit = 0;
  int64_t offset = 0;
  at::Tensor master;                // fp32, updated in place
  at::Tensor grad;                  // fp32: the averaged gradient (or this rank's own under GradSync::kNone)
  std::vector<at::Tensor>* states;  // as init_state() made them
  const WorkingCopy* copy;          // null: the master is the working weights
  // Where the segment sits in the unit's whole flat buffer: its first element there, and the
  // unit's real (unpadded) and padded lengths. Under ZeRO 1-2 every rank's part has the same
  // length, padded_numel / the data-parallel size.
  int64_t unit_offset = 0;
  int64_t unit_numel = 0;
  int64_t unit_padded_numel = 0;
  // The unit's whole gradient on this rank (the local one under GradSync::kNone), in the
  // gradient dtype; undefined when it is not kept whole (after a reduce-scatter).
  at::Tensor unit_grad;
};

// Calls fn on every segment, in order, with its states (read from disk and written back when
// swapped).
using SegmentVisitor = std::function<void(const std::function<void(Segment&)>& fn)>;

struct StepContext {
  StepArgs args;
  comm::Communicator* data_group = nullptr;  // the ranks this rank's gradients were averaged over
  zero::GradSync sync = zero::GradSync::kAllReduce;  // how the gradients of this step travelled
  SegmentVisitor for_each_segment;
  // Every unit's parameter tensors (offset and length in the unit's flat buffer), indexed by
  // Segment::unit, on every rank alike; and whether the masters are split over data_group
  // (ZeRO 1-3 on several ranks: a tensor's elements may sit on several ranks).
  std::vector<const std::vector<zero::ParamSlot>*> unit_tensors;
  bool partitioned = false;
  // With tensor parallelism: the tensor group and, per unit and tensor (indexed like
  // unit_tensors), whether the tensor is split over it (each rank of the group holds a slice;
  // the others are whole and equal on every rank of the group). Null without.
  comm::Communicator* tensor_group = nullptr;
  const std::vector<std::vector<bool>>* tensor_split = nullptr;
  // With pipeline stages: the ranks holding the other stages' parts of the model (for a
  // statistic over the whole model; a tied layer's copy is on two stages). Null without.
  comm::Communicator* pipe_group = nullptr;
};

class FlatOptimizer {
 public:
  virtual ~FlatOptimizer() = default;
  virtual std::string name() const = 0;
  // The states of a master of n elements, in init_state() order.
  virtual std::vector<StateSpec> state_specs() const = 0;
  // Their initial values (zeros, or Adagrad's initial accumulator) for a master of n elements.
  virtual std::vector<at::Tensor> init_state(int64_t n) const = 0;
  // The names of the elementwise states (what checkpoints store), in order.
  std::vector<std::string> state_names() const;
  // One update of `master` in place; when `copy` is given, the updated weights also go there
  // (in the same pass where the kernel can).
  virtual void step(at::Tensor& master, const at::Tensor& grad, std::vector<at::Tensor>& state, const StepArgs& args,
                    const WorkingCopy* copy = nullptr) = 0;

  // The gradient sync the coming step wants; `standard` is the ZeRO stage's.
  virtual zero::GradSync grad_sync(zero::GradSync standard, int64_t next_step) const { return standard; }
  // The whole optimizer step: by default step() on every segment.
  virtual void step_all(StepContext& ctx);

  // States that differ from rank to rank and are not elementwise over the master (1-bit
  // Adam's error feedback): saved in a file of each rank's own, restored only into a run with
  // the same data-parallel size and model-parallel layout. Names are the optimizer's own.
  virtual std::vector<std::pair<std::string, at::Tensor>> rank_states() const { return {}; }
  // Restores what rank_states() returned, after the elementwise states and masters were loaded
  // (`segments` reaches them, e.g. to put back a rank's own weights); throws ds::Error when a
  // name or shape does not fit.
  virtual void load_rank_states(const std::vector<std::pair<std::string, at::Tensor>>& states,
                                const SegmentVisitor& segments) {}
  // Drops them (a checkpoint without them, or saved at another layout): they start again.
  virtual void reset_rank_states() {}
  // Scalars the optimizer keeps per parameter tensor (1-bit Lamb's frozen trust ratio and its
  // factor), by parameter name: equal on every rank of the data group and independent of the
  // ZeRO stage and the model-parallel layout, so the engine saves them with each model-parallel
  // rank's model states and hands back, on load, every entry of the checkpoint.
  virtual std::vector<std::pair<std::string, at::Tensor>> tensor_states() const { return {}; }
  // Throws ds::Error for an entry that does not fit (shape, value); the engine calls it while
  // it reads a checkpoint, before anything changes.
  virtual void check_tensor_states(const std::vector<std::pair<std::string, at::Tensor>>& states) const {}
  // Takes the entries of this rank's tensors (others are another stage's), checked as above.
  virtual void load_tensor_states(const std::vector<std::pair<std::string, at::Tensor>>& states) {}
  // Bytes of the tensors the optimizer keeps itself, beyond the states the engine owns (the
  // 1-bit optimizers' whole momentum, error feedback and masks); Engine::memory_breakdown()
  // counts them with the optimizer states.
  virtual int64_t held_bytes() const { return 0; }
  // What held_bytes() comes to per unit once the optimizer holds all it will (the 1-bit
  // optimizers: in the compressed phase), for a unit of `numel` real elements (`padded` with
  // padding) of which this rank's part has `own`, on `ranks` data-parallel ranks: the
  // estimator's model, tested against held_bytes().
  virtual int64_t held_bytes_of_unit(int64_t numel, int64_t padded, int64_t own, int ranks) const { return 0; }
  // After its warm-up, each step sends every unit's momentum 1-bit compressed instead of
  // averaging gradients (1-bit Adam and Lamb): what ds-estimate prices for its steps.
  virtual bool sends_compressed_momentum() const { return false; }
  // Passes over the states per step; the engine swaps states to NVMe only for one.
  virtual int passes() const { return 1; }
  // What the progress line says about the optimizer at `step` (e.g. "warm-up"); "" for nothing.
  virtual std::string phase(int64_t step) const { return ""; }

  const OptimizerConfig& config() const { return config_; }

 protected:
  explicit FlatOptimizer(OptimizerConfig c) : config_(std::move(c)) {}
  // `copy` after an update that could not write it in its own pass.
  static void write_copy(const at::Tensor& master, const WorkingCopy* copy);
  OptimizerConfig config_;
};

// Whether the optimizer communicates its own way and so needs each rank's whole local gradient
// of every unit (1-bit Adam and Lamb, 0/1 Adam): ZeRO-2 then keeps full gradients as stage 1.
bool keeps_local_gradients(const OptimizerConfig& config);

// Adam/AdamW on the SIMD CPU kernels (or, with "torch_adam": true, torch.optim's arithmetic in
// ATen ops), Adagrad and Lion on the kernels, SGD in ATen ops. Throws ds::ConfigError for a
// type or hyper-parameter it cannot run.
std::unique_ptr<FlatOptimizer> make_optimizer(const OptimizerConfig& config);

}  // namespace ds::optim
