// FlatUnit: a group of parameters stored in one flat, padded buffer (FSDP's flat parameter).
// Every parameter tensor becomes a view into the buffer and its .grad() a view into a flat
// gradient buffer of the same layout, so the engine reduces, clips, steps and shards one
// contiguous tensor per unit instead of hundreds of small ones.
//
//   auto units = ds::zero::find_units(*model);            // one per block, plus the rest
//   ds::zero::FlatUnit u("blocks.0", units[1].params, {/*pad_to=*/64});
//   u.params();  u.grads();                               // 1-D, u.padded_numel() elements
//
// The buffer has the unit's working dtype (what the model computes with: fp32, or bf16 when
// the CPU computes in bf16); the model's parameters, whatever their floating dtype, are
// copied into it. The padding (zeros, never updated by gradients) makes the buffer divide
// evenly into shards and SIMD tiles.
#pragma once

#include <ATen/core/Tensor.h>

#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace torch::nn {
class Module;
}

namespace ds::zero {

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

struct FlatUnitOptions {
  int64_t pad_to = 64;                  // padded_numel is a multiple of this
  at::ScalarType dtype = at::kFloat;    // the working dtype of params() and grads()
  // Each .grad() is a view of a flat gradient buffer that lives as long as the unit (ZeRO
  // stages 0-1). false (stages 2-3): no such buffer; autograd makes the gradients and
  // pack_grads() copies them out and drops them, so a full gradient exists only briefly.
  bool persistent_grads = true;
  // Stage 3: the dtype of this rank's shard, which is what the all-gather sends (bf16 under
  // mixed precision: half the bytes, widened to `dtype` on arrival if that is wider).
  at::ScalarType shard_dtype = at::kFloat;
};

class FlatUnit {
 public:
  FlatUnit(std::string name, const NamedParams& params, FlatUnitOptions options);

  const std::string& name() const { return name_; }
  at::ScalarType dtype() const { return options_.dtype; }
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
  // (comm::chunk_of) in the shard dtype and releases the rest; attach(full) makes the
  // parameters views of a gathered padded buffer (of the working dtype) again, release()
  // drops it. A released parameter has shape [0], and an operation that reads it throws
  // ds::Error naming it (not a silent empty result).
  void shard(int world, int rank);
  bool sharded() const { return sharded_; }
  bool gathered() const { return params_.defined(); }
  at::ScalarType shard_dtype() const { return options_.shard_dtype; }
  // This rank's chunk in the shard dtype; undefined after drop_shard_data() (the shard then
  // lives on disk: offload_param nvme).
  const at::Tensor& shard_data() const { return shard_; }
  void drop_shard_data() { shard_ = at::Tensor(); }
  int64_t shard_offset() const { return shard_offset_; }
  int64_t shard_numel() const { return shard_numel_; }
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
  FlatUnitOptions options_;
  at::Tensor params_, grads_;
  at::Tensor shard_;
  bool sharded_ = false;
  int64_t shard_offset_ = 0, shard_numel_ = 0;
  // Sharded units own their parameters' AccumulateGrad nodes: made while the parameters have
  // their true shapes (a node checks gradients against the shape it saw when it was made).
  std::vector<std::shared_ptr<void>> accumulators_;
  int64_t numel_ = 0, padded_numel_ = 0;
  std::vector<ParamSlot> slots_;
  std::vector<at::Tensor> tensors_;
};

int64_t round_up(int64_t n, int64_t multiple);
// Units are padded to kUnitPadding x data-parallel size elements: every rank gets an equal
// shard of whole 256-byte (SIMD) tiles.
constexpr int64_t kUnitPadding = 64;

}  // namespace ds::zero
