// FlatUnit: a group of parameters stored in one flat, padded fp32 buffer (FSDP's flat
// parameter). Every parameter tensor becomes a view into the buffer and its .grad() a view
// into a flat gradient buffer of the same layout, so the engine reduces, clips, steps and
// (with ZeRO) shards one contiguous tensor per unit instead of hundreds of small ones.
//
//   auto units = ds::find_units(*model);                 // one per block, plus the rest
//   ds::FlatUnit u("blocks.0", units[1].params, /*pad_to=*/64);
//   u.params();  u.grads();                               // 1-D, u.padded_numel() elements
//
// The padding (zeros, never updated by gradients) makes the buffer divide evenly into
// shards and SIMD tiles.
#pragma once

#include <ATen/core/Tensor.h>

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "ds/ckpt/layout.h"

namespace torch::nn {
class Module;
}

namespace ds {

using NamedParams = std::vector<std::pair<std::string, at::Tensor>>;

struct UnitSpec {
  std::string name;
  NamedParams params;
};

// The default split of a model into units: each child of the root is a unit, except that
// the elements of a ModuleList / Sequential child are units each; parameters registered on
// the root itself form a unit named "root". Frozen parameters (requires_grad false) and
// empty units are left out. A parameter shared by two modules goes to the first unit only.
// Parameters keep their names in the root's state dict (checkpoints match them by name).
std::vector<UnitSpec> find_units(torch::nn::Module& model);

struct ParamSlot {
  std::string name;
  int64_t offset = 0;
  int64_t numel = 0;
  std::vector<int64_t> shape;
};

class FlatUnit {
 public:
  // persistent_grads: each .grad() is a view of a flat gradient buffer that lives as long as
  // the unit (stages 0-1). false (ZeRO stage 2): no such buffer; autograd makes the grads,
  // pack_grads() copies them out and drops them, so a full gradient exists only briefly.
  FlatUnit(std::string name, const NamedParams& params, int64_t pad_to, bool persistent_grads = true);

  const std::string& name() const { return name_; }
  const at::Tensor& params() const { return params_; }
  const at::Tensor& grads() const { return grads_; }  // undefined without persistent grads
  bool persistent_grads() const { return grads_.defined(); }
  int64_t numel() const { return numel_; }
  int64_t padded_numel() const { return padded_numel_; }
  const std::vector<ParamSlot>& slots() const { return slots_; }
  // The module's parameter tensors (views of params()), in slot order.
  const std::vector<at::Tensor>& tensors() const { return tensors_; }

  void zero_grad();
  // The gradients as one flat padded tensor of `dtype` (zeros where a parameter got none);
  // without persistent grads the parameters' .grad() are released afterwards.
  at::Tensor pack_grads(at::ScalarType dtype);
  // Makes sure each parameter's .grad() is still the view into grads() (a user's
  // module->zero_grad() sets grads to undefined); throws when a grad was replaced.
  void check_grad_views();

  // ZeRO stage 3. shard(world, rank) keeps this rank's chunk of the padded buffer
  // (comm::chunk_of) and releases the rest; attach(full) makes the parameters views of a
  // gathered padded buffer again, release() drops it. A released parameter has shape [0],
  // and an operation that reads it throws ds::Error naming it (not a silent empty result).
  void shard(int world, int rank);
  bool sharded() const { return sharded_; }
  bool gathered() const { return params_.defined(); }
  // This rank's fp32 chunk; undefined after drop_shard_data() (the engine keeps the values
  // elsewhere under bf16/fp16: a fp32 master and a half-precision copy).
  const at::Tensor& shard_data() const { return shard_; }
  void drop_shard_data() { shard_ = at::Tensor(); }
  int64_t shard_offset() const { return shard_offset_; }
  void attach(const at::Tensor& full);
  void release();
  // New names for the unit and its slots (in slot order), e.g. the root's state-dict names
  // for a unit built inside its module's constructor.
  void rename(std::string name, const std::vector<std::string>& slot_names);

  ~FlatUnit();
  FlatUnit(const FlatUnit&) = delete;
  FlatUnit& operator=(const FlatUnit&) = delete;

 private:
  std::string name_;
  at::Tensor params_, grads_;
  at::Tensor shard_;
  bool sharded_ = false;
  int64_t shard_offset_ = 0;
  // Sharded units own their parameters' AccumulateGrad nodes: made while the parameters have
  // their true shapes (a node checks gradients against the shape it saw when it was made).
  std::vector<std::shared_ptr<void>> accumulators_;
  int64_t numel_ = 0, padded_numel_ = 0;
  std::vector<ParamSlot> slots_;
  std::vector<at::Tensor> tensors_;
};

int64_t round_up(int64_t n, int64_t multiple);
// Units are padded to kUnitPadding x world-size elements: every rank gets an equal shard of
// whole 256-byte (SIMD) tiles.
constexpr int64_t kUnitPadding = 64;

// What a checkpoint records of a unit: its name, sizes and parameter slots.
ckpt::UnitInfo to_unit_info(const FlatUnit& unit);

}  // namespace ds
