// Training checkpoints in DeepSpeed's layout, saved by N ranks and loadable by M ranks:
//
//   <dir>/latest                                       the newest complete tag (written last)
//   <dir>/<tag>/mp_rank_00_model_states.pt              module state dict, RNG states, counters
//   <dir>/<tag>/zero_pp_rank_<k>_mp_rank_00_optim_states.pt   part k of every unit's fp32
//                                                      masters and optimizer states
//   <dir>/<tag>/layer_<ii>-model_<tt>-model_states.pt  a PipelineModule's layer ii (tensor rank tt)
//   <dir>/<tag>/manifest.json                          layout, units, checksums (docs/CHECKPOINTS.md)
//
// Saving (every file is written atomically; the manifest, then `latest`, commit the save):
//
//   ds::ckpt::CheckpointWriter w(dir, layout);          // layout: a Manifest without files
//   if (rank == 0) w.prepare();                         // then a barrier
//   ds::ckpt::FileInfo mine = w.write_optimizer_part(dp_rank, my_unit_shards);
//   // gather every rank's FileInfo on rank 0 (name = optim_states_name(k); bytes, xxh64), then:
//   if (rank == 0) { files.push_back(w.write_model_states(model)); w.commit(files); }
//
// Loading, at any world size and partition:
//
//   ds::ckpt::CheckpointReader ck(dir);                 // the tag in <dir>/latest
//   ck.check_model(model_units);                        // names + shapes, or a one-line error
//   auto mine = ck.load_partition(model_units, {scheme, world}, rank);  // fp32 + states per unit
//   auto model = ck.load_model_states();                // RNG states, buffers
//   ds::ckpt::EngineState s = ck.engine_state();
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "ds/ckpt/layout.h"
#include "ds/ckpt/manifest.h"
#include "ds/ckpt/reshape.h"

namespace ds::ckpt {

using NamedTensors = std::vector<std::pair<std::string, at::Tensor>>;

// One unit's slice of the optimizer on one rank: fp32 master elements and one tensor per
// optimizer state name; all 1-D float32 CPU tensors of the part's length.
struct UnitShard {
  at::Tensor fp32;
  std::vector<at::Tensor> states;
};

struct ModelStates {
  NamedTensors module;      // the module's state dict (weights as the model holds them, buffers)
  NamedTensors rng_states;  // uint8 tensors, e.g. {"cpu", at::detail::getDefaultCPUGenerator().get_state()}
  // The optimizer's per-tensor scalars by parameter name (FlatOptimizer::tensor_states(); 1-bit
  // Lamb's), under "optimizer_tensor_states" when there are any.
  NamedTensors optimizer_tensors;
};

class CheckpointWriter {
 public:
  // `layout`: a Manifest whose tag, world sizes, stage, partition, units and optimizer are
  // set; `files` is ignored. Throws ds::Error for an inconsistent layout.
  CheckpointWriter(std::string dir, Manifest layout);

  const std::string& dir() const { return dir_; }
  const std::string& tag_path() const { return tag_path_; }
  const Manifest& layout() const { return layout_; }

  // Rank 0, before any rank writes: creates <dir>/<tag>; if the tag exists, removes its
  // manifest first (a crash while overwriting leaves the tag incomplete, never mixed) and
  // temp files of earlier crashed saves.
  void prepare() const;
  // Part `part` (the rank's index in layout().partition) of the units model-parallel rank
  // `mp_rank` holds (UnitInfo::mp_rank), in layout order. Under kEqualChunks a tensor may be
  // the rank's whole padded chunk; its tail is not saved.
  FileInfo write_optimizer_part(int part, const std::vector<UnitShard>& units, int mp_rank = 0) const;
  // Data-parallel rank 0 of each model-parallel rank.
  FileInfo write_model_states(const ModelStates& states, int mp_rank = 0) const;
  // A pipeline layer's state dict (names relative to the layer), as DeepSpeed's pipeline
  // engine saves it: a plain {name: tensor} dict that the layer's load_state_dict takes.
  FileInfo write_layer_states(int layer, int tp_rank, const NamedTensors& state) const;
  // The optimizer states that belong to one rank only (FlatOptimizer::rank_states): every
  // data-parallel rank that has some writes its own file.
  FileInfo write_rank_states(int dp_rank, int mp_rank, const NamedTensors& states) const;
  // Rank 0, after every file is written: checks each file's size on disk, writes
  // manifest.json, then <dir>/latest (if update_latest).
  void commit(const std::vector<FileInfo>& files, bool update_latest = true) const;

 private:
  std::string dir_, tag_path_;
  Manifest layout_;
};

// A whole save from one process (world size 1, tools, tests): parts[k] is part k.
void save_checkpoint(const std::string& dir, const Manifest& layout,
                     const std::vector<std::vector<UnitShard>>& parts, const ModelStates& model,
                     bool update_latest = true);

struct LoadOptions {
  bool optimizer_states = true;  // false: fp32 masters only (DeepSpeed's load_optimizer_states=False)
  // When loading states and non-empty: the engine's optimizer state names; a checkpoint with
  // other names is an error naming both.
  std::vector<std::string> expected_state_names;
  // false: the model is one model-parallel rank's part (see check_model).
  bool whole_model = true;
  // With tensor parallelism: the loading rank's tensor rank of `tensor_size` (0: the
  // checkpoint's). At the saved size a tensor rank reads the slices its rank saved; at another
  // size its slice of each split parameter is cut from the saved slices that overlap it.
  int tensor_rank = 0;
  int tensor_size = 0;
};

class CheckpointReader {
 public:
  // Opens <dir>/<tag>, or the tag named by <dir>/latest when `tag` is empty. Validates the
  // manifest and that every file it lists exists with its recorded size (missing ones are
  // listed in the error). Checksums are checked whenever a file is read.
  explicit CheckpointReader(const std::string& dir, const std::string& tag = "");

  const std::string& tag() const { return tag_; }
  const std::string& tag_path() const { return tag_path_; }
  const Manifest& manifest() const { return manifest_; }
  const EngineState& engine_state() const { return manifest_.engine; }

  // Reads one file of the tag: "" when its size and checksum match the manifest, else what is wrong.
  std::string verify_file(const FileInfo& file) const;
  // verify_file() for every file; throws ds::Error with the first problem.
  void verify_all() const;
  // Throws unless the model has exactly the checkpoint's parameters with the same shapes. A
  // part of a model (a pipeline stage: whole = false) must have only checkpoint parameters,
  // with the same shapes; the caller checks that the parts together cover it. With tensor
  // parallelism the model is tensor rank `tensor_rank` of `tensor_size` (0: the checkpoint's
  // size): a split parameter must be that rank's slice of the saved whole.
  void check_model(const std::vector<UnitInfo>& model_units, bool whole = true, int tensor_rank = 0,
                   int tensor_size = 0) const;

  // For each unit u of the model, elements ranges[u] of its flat buffer: fp32 masters and,
  // per options, optimizer states; read from whichever saved parts hold them, whatever their
  // count. Padding elements are zero.
  std::vector<UnitShard> load_ranges(const std::vector<UnitInfo>& model_units,
                                     const std::vector<Range>& ranges, const LoadOptions& options = {}) const;
  // Part `index` of `partition` of every unit (a rank's ZeRO shard; {scheme, 1}: everything).
  std::vector<UnitShard> load_partition(const std::vector<UnitInfo>& model_units, const Partition& partition,
                                        int index, const LoadOptions& options = {}) const;
  // The model-states file of model-parallel rank `mp_rank`.
  ModelStates load_model_states(int mp_rank = 0) const;
  // What write_rank_states saved for (dp_rank, mp_rank); nullopt when the tag has no such file.
  std::optional<NamedTensors> load_rank_states(int dp_rank, int mp_rank = 0) const;
  // Every parameter's fp32 master weights, shaped, in manifest order; split parameters
  // joined from every tensor rank's slice (the unsplit model's state dict).
  NamedTensors load_fp32_weights() const;

 private:
  // The tensors of part `part` of mp rank `mp_rank`'s file, per manifest unit (empty for
  // units other files hold).
  std::vector<std::vector<at::Tensor>> load_part(int part, int mp_rank, size_t kinds) const;
  // The tensor layouts of this checkpoint and of a model's rank (size 0: the checkpoint's).
  TensorReslice reslice_for(int tensor_rank, int tensor_size) const;
  // Every parameter of one tensor rank (its slices of the split ones), shaped, in manifest order.
  NamedTensors load_tensor_rank(int tensor_rank) const;
  // Fills targets[t][kind] (lengths[t] elements; zero where the plan writes nothing).
  void run_plan(const std::vector<CopyOp>& plan, size_t kinds, const std::vector<int64_t>& lengths,
                std::vector<std::vector<at::Tensor>>& targets) const;
  std::string file_path(const std::string& name) const { return tag_path_ + "/" + name; }
  const FileInfo& file_info(const std::string& name) const;

  std::string dir_, tag_, tag_path_;
  Manifest manifest_;
};

// The tag in <dir>/latest, with a clear error for a missing directory, no `latest` (naming
// the complete tags found), or an empty or invalid one.
std::string read_latest(const std::string& dir);
// Sub-directories of `dir` that hold a manifest.json (complete saves), sorted.
std::vector<std::string> list_tags(const std::string& dir);

}  // namespace ds::ckpt
