// manifest.json: everything a loader needs to validate and reshape a checkpoint tag -- the
// layout it was saved under, the units and their parameter slots, the optimizer's state
// names, the engine's counters, and the size and xxh64 checksum of every file in the tag.
// Written last inside the tag (before `latest`): a tag without one is an unfinished save.
//
//   ds::ckpt::Manifest m;
//   m.dp_world_size = 4;  m.zero_stage = 2;  m.partition = {PartitionScheme::kTensorSplit, 4};
//   m.units = ...;  m.optimizer = {"AdamW", {"exp_avg", "exp_avg_sq"}};
//   std::string text = ds::ckpt::manifest_to_json(m).dump(2);
//   ds::ckpt::Manifest back = ds::ckpt::parse_manifest(text, "x/manifest.json");  // validates
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "ds/ckpt/layout.h"

namespace ds::ckpt {

// Version 2 records each parameter's split dimension (SlotInfo::split_dim); version 1
// manifests are read as "every parameter whole" (split_dim -1). Version 3 records each
// unit's model-parallel rank (UnitInfo::mp_rank, 0 before) and each split's blocks
// (SlotInfo::split_groups, 1 before).
constexpr int kFormatVersion = 3;

struct LossScalerState {  // mirrors ds::LossScaler::State
  double scale = 1.0;
  int hysteresis_left = 0;
  int64_t iteration = 0;
  int64_t last_overflow_iteration = -1;
};

struct DataPosition {  // where the data loader resumes
  int64_t epoch = 0;
  int64_t batches_in_epoch = 0;  // batches consumed in the current epoch
  int64_t samples = 0;           // samples consumed in total
  uint64_t seed = 0;             // the sampler's shuffle seed
};

// The engine's counters and small state: a typed struct, stored as JSON in the manifest
// (RNG states, which are byte blobs, go to the model-states file as uint8 tensors).
struct EngineState {
  int64_t global_steps = 0;          // optimizer steps, skipped ones included (DeepSpeed's global_steps)
  int64_t global_samples = 0;        // samples consumed over all ranks
  int64_t micro_steps = 0;           // backward() calls
  int64_t skipped_steps = 0;         // steps skipped on fp16 overflow
  int64_t optimizer_steps = 0;       // steps applied: the optimizer's bias-correction t
  int64_t scheduler_iteration = -1;  // the LR schedule's last_batch_iteration
  LossScalerState loss_scaler;
  DataPosition data;
  nlohmann::json client = nlohmann::json::object();  // the user's client_state (a JSON object)
};

struct OptimizerInfo {
  std::string type;                      // "Adam", "AdamW", "SGD", ...
  std::vector<std::string> state_names;  // one elementwise tensor per name, e.g. exp_avg, exp_avg_sq
};

struct FileInfo {
  std::string name;  // inside the tag directory
  int64_t bytes = 0;
  uint64_t xxh64 = 0;
};

struct Manifest {
  int format_version = kFormatVersion;
  std::string tag;
  std::string producer = "deepspeed.cpp";
  int dp_world_size = 1, pp_world_size = 1, tp_world_size = 1;
  int zero_stage = 0;
  std::string precision = "fp32";  // the training precision (fp32/bf16/fp16); stored tensors are fp32
  Partition partition;             // how the optimizer files cut every unit
  std::vector<UnitInfo> units;
  OptimizerInfo optimizer;
  EngineState engine;
  std::vector<FileInfo> files;  // the model-states files and every optimizer file

  const FileInfo* find_file(const std::string& name) const;
  // The model-parallel ranks that hold units, ascending (each has a model-states file and
  // partition.count optimizer files).
  std::vector<int> mp_ranks() const;
  // The units, with the parameters of other tensor ranks than `tensor_rank` removed (their
  // units stay, empty, so indices still match `units`). Model-parallel rank m is tensor rank
  // m % tp_world_size (the model group orders ranks pipe-major).
  std::vector<UnitInfo> units_of_tensor_rank(int tensor_rank) const;
};

// Keys in a reading order (format, tag, layout, units, engine state, files).
nlohmann::ordered_json manifest_to_json(const Manifest& m);
// The JSON text written to manifest.json: one line per field, slot and file.
std::string manifest_text(const Manifest& m);
// Parses and validates: types, ranges, units (check_units), the file list (safe names, every
// optimizer part present). Throws ds::Error starting with `path`.
Manifest parse_manifest(const std::string& text, const std::string& path);

// The manifest's encoding of units alone (e.g. to send them between ranks); the parse
// validates as parse_manifest does (check_units). Throws ds::Error starting with `where`.
nlohmann::ordered_json units_to_json(const std::vector<UnitInfo>& units);
std::vector<UnitInfo> units_from_json(const std::string& text, const std::string& where);

nlohmann::ordered_json engine_state_to_json(const EngineState& s);
EngineState engine_state_from_json(const nlohmann::json& j, const std::string& path);

// Checks the layout part of a manifest a writer is about to use (no files yet).
void check_layout(const Manifest& m, const std::string& what);

}  // namespace ds::ckpt
