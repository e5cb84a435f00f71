// What a checkpoint stores and how it is cut: units, parameter slots, partitions, file names.
//
// A unit is one flat fp32 buffer of `padded_numel` elements (ds::FlatUnit); its parameters
// sit at `slots` (offset, numel, shape); the rest is zero padding. The optimizer files cut
// every unit the same way: `Partition{scheme, count}` says which elements file k holds.
//
//   ds::ckpt::Partition p{ds::ckpt::PartitionScheme::kTensorSplit, /*count=*/4};
//   ds::ckpt::Range r = ds::ckpt::partition_range(/*padded_numel=*/10, p, /*index=*/1);  // {3, 3}
//   std::string f = ds::ckpt::optim_states_name(/*dp_rank=*/1);
//       // "zero_pp_rank_1_mp_rank_00_optim_states.pt", DeepSpeed's name
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <vector>

namespace ds::ckpt {

enum class PartitionScheme {
  kTensorSplit,  // torch.tensor_split / ds::comm::chunk_of: n/N each, one more for the first n%N
  kEqualChunks,  // ceil(n/N) each, the last ones shorter or empty (DeepSpeed's padded partitions)
};
const char* to_string(PartitionScheme s);
PartitionScheme partition_scheme_from_string(const std::string& s);  // throws ds::Error

struct Partition {
  PartitionScheme scheme = PartitionScheme::kTensorSplit;
  int count = 1;  // number of optimizer files; 1 = nothing sharded (ZeRO stage 0)
};

struct Range {
  int64_t offset = 0;
  int64_t length = 0;
  int64_t end() const { return offset + length; }
};

// The elements of a flat buffer of n elements that part `index` of `p` holds (always in
// bounds; under kEqualChunks a rank's buffer may be longer, the excess is padding).
Range partition_range(int64_t n, const Partition& p, int index);
// The part that holds element `element` (0 <= element < n).
int partition_of(int64_t n, const Partition& p, int64_t element);

struct SlotInfo {
  std::string name;  // the parameter's name in the module's state dict
  int64_t offset = 0;
  int64_t numel = 0;
  std::vector<int64_t> shape;
  // The dimension along which tensor parallelism splits the parameter across the
  // model-parallel ranks (`shape` is then this rank's piece); -1: whole on every rank.
  int split_dim = -1;
  // With split_dim >= 0: the split dimension is this many equal blocks (a fused q/k/v weight:
  // 3) and each rank holds its slice of every block, in block order.
  int split_groups = 1;
};

struct UnitInfo {
  std::string name;
  int64_t numel = 0;         // elements that belong to parameters
  int64_t padded_numel = 0;  // the flat buffer's length
  std::vector<SlotInfo> slots;
  // The model-parallel rank (pipeline stage x tensor shard) whose files hold the unit: its
  // optimizer parts are zero_pp_rank_<k>_mp_rank_<mp_rank>_optim_states.pt. 0 without
  // model parallelism.
  int mp_rank = 0;
};

// Structural checks for units from a manifest or from the engine: non-empty unique names,
// slot offsets and sizes inside the unit, non-overlapping, shapes that match numel. Throws
// ds::Error starting with `what` (e.g. the manifest's path) and naming the offending field.
void check_units(const std::vector<UnitInfo>& units, const std::string& what);

int64_t parameter_count(const std::vector<UnitInfo>& units);

// "[4, 8]"
std::string shape_string(const std::vector<int64_t>& shape);

// The whole tensor from the ranks' slices (pieces[r] from tensor rank r), split along `dim`
// in `groups` blocks as SlotInfo says.
at::Tensor join_slices(const std::vector<at::Tensor>& pieces, int dim, int groups = 1);

// DeepSpeed's file names inside a tag directory.
std::string model_states_name(int mp_rank = 0);               // mp_rank_00_model_states.pt
std::string optim_states_name(int dp_rank, int mp_rank = 0);  // zero_pp_rank_<dp>_mp_rank_00_optim_states.pt
// A pipeline layer's weights (DeepSpeed's PipelineModule.ckpt_layer_path): layer_05-model_00-model_states.pt
std::string layer_states_name(int layer, int tp_rank = 0);
// An optimizer's states of one rank that are not elementwise (1-bit Adam's error feedback; no
// DeepSpeed counterpart): dp_rank_<dp>_mp_rank_00_optim_rank_states.pt
std::string rank_states_name(int dp_rank, int mp_rank = 0);
bool is_rank_states_name(const std::string& name);
constexpr const char* kManifestName = "manifest.json";
constexpr const char* kLatestName = "latest";

// A tag is one path component of printable characters (no '/', not "." or "..").
void check_tag(const std::string& tag);

}  // namespace ds::ckpt
