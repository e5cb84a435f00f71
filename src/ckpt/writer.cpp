// The save side of checkpoint.h.
#include <ATen/ATen.h>
#include <dirent.h>

#include <algorithm>
#include <cstring>
#include <memory>

#include "ds/ckpt/checkpoint.h"
#include "ds/common/error.h"
#include "pickle_io.h"

namespace ds::ckpt {

namespace {

using detail::kModelFormat;
using detail::kShardFormat;
constexpr const char* kVersion = detail::kProducerVersion;

// Names of temp files in `dir` (of crashed atomic writes).
std::vector<std::string> temp_files_in(const std::string& dir) {
  std::vector<std::string> out;
  std::unique_ptr<DIR, int (*)(DIR*)> d(::opendir(dir.c_str()), &::closedir);
  if (!d) DS_CHECK_SYS(-1, "cannot list ", dir);
  while (dirent* e = ::readdir(d.get()))
    if (is_temp_file_name(e->d_name)) out.push_back(e->d_name);
  return out;
}

// The saved part of one tensor: checks and, under kEqualChunks, cuts the padded tail.
at::Tensor part_tensor(const at::Tensor& t, const Range& r, const Partition& p, int64_t padded_numel,
                       const std::string& what) {
  if (!t.defined()) throw Error(ds::str(what, " is undefined"));
  if (t.scalar_type() != at::kFloat || t.dim() != 1 || !t.device().is_cpu())
    throw Error(ds::str(what, " must be a 1-D float32 CPU tensor, got ", t.scalar_type(), " of shape ",
                        t.sizes(), " on ", t.device()));
  int64_t chunk = (padded_numel + p.count - 1) / p.count;
  if (t.numel() == r.length) return t;
  if (p.scheme == PartitionScheme::kEqualChunks && t.numel() == chunk) return t.narrow(0, 0, r.length);
  throw Error(ds::str(what, " has ", t.numel(), " elements; under ", to_string(p.scheme), " over ", p.count,
                      " parts it holds ", r.length));
}

}  // namespace

CheckpointWriter::CheckpointWriter(std::string dir, Manifest layout)
    : dir_(std::move(dir)), layout_(std::move(layout)) {
  if (dir_.empty()) throw Error("empty checkpoint directory");
  layout_.files.clear();
  check_layout(layout_, ds::str("checkpoint ", dir_, "/", layout_.tag));
  tag_path_ = dir_ + "/" + layout_.tag;
}

void CheckpointWriter::prepare() const {
  make_directories(tag_path_);
  remove_file_durably(tag_path_ + "/" + kManifestName);
  for (const auto& name : temp_files_in(tag_path_)) remove_file_durably(tag_path_ + "/" + name);
  // Saves of other tags killed by SIGKILL left their temp files (up to a whole shard each).
  for (const StaleEntry& e : stale_temp_files(dir_)) remove_file_durably(e.path);
}

FileInfo CheckpointWriter::write_optimizer_part(int part, const std::vector<UnitShard>& units, int mp_rank) const {
  const Partition& p = layout_.partition;
  if (part < 0 || part >= p.count)
    throw Error(ds::str("optimizer part ", part, " does not exist: the layout has ", p.count, " parts"));
  std::vector<const UnitInfo*> infos;  // the units this model-parallel rank's files hold
  for (const UnitInfo& u : layout_.units)
    if (u.mp_rank == mp_rank) infos.push_back(&u);
  if (units.size() != infos.size())
    throw Error(ds::str("optimizer part ", part, " of mp rank ", mp_rank, ": ", units.size(), " unit shards for ",
                        infos.size(), " units"));
  const auto& names = layout_.optimizer.state_names;
  NamedTensors fp32;
  std::vector<NamedTensors> states(names.size());
  for (size_t u = 0; u < units.size(); ++u) {
    const UnitInfo& info = *infos[u];
    Range r = partition_range(info.padded_numel, p, part);
    std::string what = ds::str("part ", part, " of unit ", info.name);
    fp32.emplace_back(info.name, part_tensor(units[u].fp32, r, p, info.padded_numel, what + " (fp32)"));
    if (units[u].states.size() != names.size())
      throw Error(ds::str(what, ": ", units[u].states.size(), " optimizer state tensors for ", names.size(),
                          " names"));
    for (size_t k = 0; k < names.size(); ++k)
      states[k].emplace_back(
          info.name, part_tensor(units[u].states[k], r, p, info.padded_numel, what + " (" + names[k] + ")"));
  }
  c10::impl::GenericDict state_dict = detail::new_dict();
  for (size_t k = 0; k < names.size(); ++k) state_dict.insert(names[k], detail::tensor_dict(states[k]));
  c10::impl::GenericDict d = detail::new_dict();
  d.insert("format", kShardFormat);
  d.insert("format_version", int64_t(kFormatVersion));
  d.insert("ds_version", kVersion);
  d.insert("part", int64_t(part));
  d.insert("part_count", int64_t(p.count));
  d.insert("mp_rank", int64_t(mp_rank));
  d.insert("partition_scheme", to_string(p.scheme));
  d.insert("zero_stage", int64_t(layout_.zero_stage));
  d.insert("fp32", detail::tensor_dict(fp32));
  d.insert("optimizer_state", state_dict);
  make_directories(tag_path_);
  std::string name = optim_states_name(part, mp_rank);
  FileDigest digest = detail::save_pickle(tag_path_ + "/" + name, d);
  return {name, digest.bytes, digest.xxh64};
}

FileInfo CheckpointWriter::write_model_states(const ModelStates& states, int mp_rank) const {
  for (const auto& [name, t] : states.rng_states)
    if (t.scalar_type() != at::kByte) throw Error(ds::str("RNG state ", name, " must be a uint8 tensor"));
  const EngineState& e = layout_.engine;
  c10::impl::GenericDict d = detail::new_dict();
  d.insert("module", detail::tensor_dict(states.module));  // DeepSpeed's key for the weights
  d.insert("rng_states", detail::tensor_dict(states.rng_states));
  if (!states.optimizer_tensors.empty()) d.insert("optimizer_tensor_states", detail::tensor_dict(states.optimizer_tensors));
  d.insert("global_steps", e.global_steps);
  d.insert("global_samples", e.global_samples);
  d.insert("skipped_steps", e.skipped_steps);
  d.insert("dp_world_size", int64_t(layout_.dp_world_size));
  d.insert("mp_world_size", int64_t(layout_.tp_world_size));
  d.insert("ds_version", kVersion);
  d.insert("format", kModelFormat);
  d.insert("format_version", int64_t(kFormatVersion));
  make_directories(tag_path_);
  std::string name = model_states_name(mp_rank);
  FileDigest digest = detail::save_pickle(tag_path_ + "/" + name, d);
  return {name, digest.bytes, digest.xxh64};
}

FileInfo CheckpointWriter::write_layer_states(int layer, int tp_rank, const NamedTensors& state) const {
  make_directories(tag_path_);
  std::string name = layer_states_name(layer, tp_rank);
  FileDigest digest = detail::save_pickle(tag_path_ + "/" + name, detail::tensor_dict(state));
  return {name, digest.bytes, digest.xxh64};
}

FileInfo CheckpointWriter::write_rank_states(int dp_rank, int mp_rank, const NamedTensors& states) const {
  c10::impl::GenericDict d = detail::new_dict();
  d.insert("format", detail::kRankStatesFormat);
  d.insert("optimizer", layout_.optimizer.type);
  d.insert("dp_world_size", int64_t(layout_.dp_world_size));
  d.insert("states", detail::tensor_dict(states));
  make_directories(tag_path_);
  std::string name = rank_states_name(dp_rank, mp_rank);
  FileDigest digest = detail::save_pickle(tag_path_ + "/" + name, d);
  return {name, digest.bytes, digest.xxh64};
}

void CheckpointWriter::commit(const std::vector<FileInfo>& files, bool update_latest) const {
  Manifest m = layout_;
  m.files = files;
  auto rank_of = [](const FileInfo& f) {  // model states first, then the parts by data rank, then model rank
    int part = -1, mp = -1;
    if (std::sscanf(f.name.c_str(), "mp_rank_%d_", &mp) == 1) return std::make_pair(-1, mp);
    if (std::sscanf(f.name.c_str(), "zero_pp_rank_%d_mp_rank_%d_", &part, &mp) == 2) return std::make_pair(part, mp);
    return std::make_pair(INT32_MAX, 0);
  };
  std::stable_sort(m.files.begin(), m.files.end(),
                   [&](const FileInfo& a, const FileInfo& b) { return rank_of(a) < rank_of(b); });
  for (const auto& f : m.files) {
    std::string path = tag_path_ + "/" + f.name;
    auto size = file_size(path);
    if (!size) throw Error(ds::str("cannot commit checkpoint ", tag_path_, ": ", f.name, " was not written"));
    if (*size != f.bytes)
      throw Error(ds::str("cannot commit checkpoint ", tag_path_, ": ", f.name, " has ", *size,
                          " bytes, its record says ", f.bytes));
  }
  std::string text = manifest_text(m);
  parse_manifest(text,
                 tag_path_ + "/" + kManifestName);  // what we write must read back (all parts listed, ...)
  write_file_atomic(tag_path_ + "/" + kManifestName, text);
  if (update_latest) write_file_atomic(dir_ + "/" + kLatestName, m.tag);
}

void save_checkpoint(const std::string& dir, const Manifest& layout,
                     const std::vector<std::vector<UnitShard>>& parts, const ModelStates& model,
                     bool update_latest) {
  CheckpointWriter w(dir, layout);
  if (int(parts.size()) != w.layout().partition.count)
    throw Error(ds::str(parts.size(), " optimizer parts for a partition into ", w.layout().partition.count));
  w.prepare();
  std::vector<FileInfo> files;
  for (size_t k = 0; k < parts.size(); ++k) files.push_back(w.write_optimizer_part(int(k), parts[k]));
  files.push_back(w.write_model_states(model));
  w.commit(files, update_latest);
}

}  // namespace ds::ckpt
