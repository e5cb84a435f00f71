// The load side of checkpoint.h: find the tag, validate, plan the copies, read each file once.
#include <ATen/ATen.h>
#include <dirent.h>
#include <sys/stat.h>

#include <algorithm>
#include <map>
#include <memory>

#include "ds/ckpt/checkpoint.h"
#include "ds/ckpt/reshape.h"
#include "ds/common/error.h"
#include "pickle_io.h"

namespace ds::ckpt {

namespace {

// Why `dir` cannot be a checkpoint directory: missing, or something else than a directory.
std::string not_a_checkpoint_dir(const std::string& dir) {
  struct stat st {};
  if (::stat(dir.c_str(), &st) != 0) return ds::str("checkpoint directory ", dir, " does not exist");
  return ds::str(dir, " is not a directory: give the directory a checkpoint was saved into (it holds a 'latest' "
                      "file and one directory per tag)");
}

constexpr int64_t kMaxManifestBytes = int64_t(256) << 20;

std::string join(const std::vector<std::string>& items, size_t max_items = 8) {
  std::string out;
  for (size_t i = 0; i < items.size() && i < max_items; ++i) out += (i ? ", " : "") + items[i];
  if (items.size() > max_items) out += ds::str(", ... (", items.size(), " in all)");
  return out;
}

std::string trim_space(const std::string& s) {
  const char* ws = " \t\r\n";
  auto b = s.find_first_not_of(ws);
  return b == std::string::npos ? "" : s.substr(b, s.find_last_not_of(ws) - b + 1);
}

std::string tags_hint(const std::string& dir) {
  auto tags = list_tags(dir);
  return tags.empty() ? ds::str(" (", dir, " holds no complete checkpoint)")
                      : ds::str(" (complete tags in ", dir, ": ", join(tags), ")");
}

// A tensor of a shard file, checked against the manifest before any use.
at::Tensor checked_part(const at::Tensor& t, int64_t length, const std::string& where) {
  if (t.scalar_type() != at::kFloat || t.dim() != 1 || t.numel() != length || !t.device().is_cpu())
    throw Error(ds::str(where, ": expected a 1-D float32 tensor of ", length,
                        " elements (per the manifest), got ", t.scalar_type(), " of shape ", t.sizes()));
  return t.contiguous();
}

// Bytes the fp32 elements of a part need at least: a manifest cannot make us allocate more
// than the files on disk hold.
bool part_fits(const Manifest& m, int part, int mp_rank, int64_t file_bytes) {
  int64_t elements = 0, per_element = 4 * int64_t(1 + m.optimizer.state_names.size()), bytes = 0;
  for (const auto& u : m.units)
    if (u.mp_rank == mp_rank && __builtin_add_overflow(elements, partition_range(u.padded_numel, m.partition, part).length,
                               &elements))
      return false;
  return !__builtin_mul_overflow(elements, per_element, &bytes) && bytes <= file_bytes;
}

}  // namespace

std::vector<std::string> list_tags(const std::string& dir) {
  std::vector<std::string> tags;
  std::unique_ptr<DIR, int (*)(DIR*)> d(::opendir(dir.c_str()), &::closedir);
  if (!d) return tags;
  while (dirent* e = ::readdir(d.get())) {
    std::string name = e->d_name;
    if (name == "." || name == "..") continue;
    std::string sub = dir + "/" + name;
    if (is_directory(sub) && file_size(sub + "/" + kManifestName)) tags.push_back(name);
  }
  std::sort(tags.begin(), tags.end());
  return tags;
}

std::string read_latest(const std::string& dir) {
  if (!is_directory(dir)) throw Error(not_a_checkpoint_dir(dir));
  std::string path = dir + "/" + kLatestName;
  auto size = file_size(path);
  if (!size) {
    auto tags = list_tags(dir);
    if (tags.empty())
      throw Error(
          ds::str("no checkpoint in ", dir, ": it has no 'latest' file and no complete checkpoint tag"));
    throw Error(
        ds::str(dir, " has no 'latest' file; complete tags there: ", join(tags), " (pass one as the tag)"));
  }
  if (*size > 4096) throw Error(ds::str(path, " is ", *size, " bytes: not a checkpoint 'latest' file"));
  FileContents f = read_file(path);
  std::string tag = trim_space(std::string(f.data.begin(), f.data.end()));
  if (tag.empty()) throw Error(ds::str(path, " is empty: it should name the newest checkpoint tag"));
  try {
    check_tag(tag);
  } catch (const Error& e) {
    throw Error(ds::str(path, ": ", e.what()));
  }
  return tag;
}

CheckpointReader::CheckpointReader(const std::string& dir, const std::string& tag) : dir_(dir) {
  if (!is_directory(dir_)) throw Error(not_a_checkpoint_dir(dir_));
  tag_ = tag.empty() ? read_latest(dir_) : tag;
  check_tag(tag_);
  tag_path_ = dir_ + "/" + tag_;
  if (!is_directory(tag_path_))
    throw Error(
        ds::str("checkpoint tag '", tag_, "' not found: ", tag_path_, " does not exist", tags_hint(dir_)));
  std::string manifest_path = file_path(kManifestName);
  auto size = file_size(manifest_path);
  if (!size)
    throw Error(ds::str("checkpoint ", tag_path_, " is incomplete: it has no ", kManifestName,
                        " (its save did not finish)", tags_hint(dir_)));
  if (*size > kMaxManifestBytes)
    throw Error(ds::str(manifest_path, " is ", *size, " bytes: too large for a manifest"));
  FileContents text = read_file(manifest_path);
  manifest_ = parse_manifest(std::string(text.data.begin(), text.data.end()), manifest_path);

  std::vector<std::string> missing;
  for (const auto& f : manifest_.files) {
    auto bytes = file_size(file_path(f.name));
    if (!bytes) {
      missing.push_back(f.name);
    } else if (*bytes != f.bytes) {
      throw Error(ds::str("checkpoint file ", file_path(f.name), " has ", *bytes,
                          " bytes but the manifest records ", f.bytes, " (truncated or overwritten)"));
    }
  }
  if (!missing.empty())
    throw Error(ds::str("checkpoint ", tag_path_, " is missing ", missing.size(), " of ",
                        manifest_.files.size(), " files: ", join(missing)));
  for (int mp : manifest_.mp_ranks())
    for (int k = 0; k < manifest_.partition.count; ++k) {
      const FileInfo& f = file_info(optim_states_name(k, mp));
      if (!part_fits(manifest_, k, mp, f.bytes))
        throw Error(ds::str(manifest_path, ": the units claim more elements for part ", k, " than ", f.name,
                            " can hold (", f.bytes, " bytes)"));
    }
}

const FileInfo& CheckpointReader::file_info(const std::string& name) const {
  const FileInfo* f = manifest_.find_file(name);
  if (!f) throw Error(ds::str("checkpoint ", tag_path_, ": the manifest does not list ", name));
  return *f;
}

std::string CheckpointReader::verify_file(const FileInfo& f) const {
  std::string path = file_path(f.name);
  auto size = file_size(path);
  if (!size) return ds::str("checkpoint file ", path, " is missing");
  FileContents c = read_file(path);
  if (c.digest.bytes != f.bytes)
    return ds::str("checkpoint file ", path, " has ", c.digest.bytes, " bytes but the manifest records ",
                   f.bytes, " (truncated or overwritten)");
  if (c.digest.xxh64 != f.xxh64)
    return ds::str("checkpoint file ", path, " is corrupt: its xxh64 is ", to_hex(c.digest.xxh64),
                   " but the manifest records ", to_hex(f.xxh64));
  return "";
}

void CheckpointReader::verify_all() const {
  for (const auto& f : manifest_.files) {
    std::string problem = verify_file(f);
    if (!problem.empty()) throw Error(problem);
  }
}

TensorReslice CheckpointReader::reslice_for(int tensor_rank, int tensor_size) const {
  TensorReslice t{manifest_.tp_world_size, tensor_size > 0 ? tensor_size : manifest_.tp_world_size, tensor_rank};
  if (tensor_rank < 0 || tensor_rank >= t.size)
    throw Error(ds::str("tensor rank ", tensor_rank, " is outside a tensor-parallel size of ", t.size));
  return t;
}

void CheckpointReader::check_model(const std::vector<UnitInfo>& model_units, bool whole, int tensor_rank,
                                   int tensor_size) const {
  check_units(model_units, "the model's units");
  const TensorReslice t = reslice_for(tensor_rank, tensor_size);
  if (t.same()) check_compatible(manifest_.units_of_tensor_rank(tensor_rank), model_units, whole, t);
  else check_compatible(manifest_.units_of_tensor_rank(0), model_units, whole, t);
}

std::vector<std::vector<at::Tensor>> CheckpointReader::load_part(int part, int mp_rank, size_t kinds) const {
  std::string name = optim_states_name(part, mp_rank), path = file_path(name);
  detail::DictReader d(detail::load_pickle(path, file_info(name)), path);
  if (d.string("format") != detail::kShardFormat || d.integer("part") != part ||
      d.integer("part_count") != manifest_.partition.count)
    throw Error(ds::str(path, ": not part ", part, " of ", manifest_.partition.count, " of this checkpoint"));
  detail::DictReader fp32 = d.dict("fp32"), states = d.dict("optimizer_state");
  std::vector<std::vector<at::Tensor>> out(manifest_.units.size());
  for (size_t u = 0; u < manifest_.units.size(); ++u) {
    const UnitInfo& unit = manifest_.units[u];
    if (unit.mp_rank != mp_rank) continue;
    int64_t length = partition_range(unit.padded_numel, manifest_.partition, part).length;
    out[u].push_back(checked_part(fp32.tensor(unit.name), length, ds::str(path, ": fp32 of ", unit.name)));
    for (size_t k = 1; k < kinds; ++k) {
      const std::string& state = manifest_.optimizer.state_names[k - 1];
      out[u].push_back(checked_part(states.dict(state).tensor(unit.name), length,
                                    ds::str(path, ": ", state, " of ", unit.name)));
    }
  }
  return out;
}

void CheckpointReader::run_plan(const std::vector<CopyOp>& plan, size_t kinds,
                                const std::vector<int64_t>& lengths,
                                std::vector<std::vector<at::Tensor>>& targets) const {
  targets.assign(lengths.size(), std::vector<at::Tensor>(kinds));
  // By file: (model-parallel rank of the source unit, part).
  auto file_of = [&](const CopyOp& op) { return std::make_pair(manifest_.units[size_t(op.src_unit)].mp_rank, op.part); };
  std::vector<CopyOp> ops = plan;
  std::stable_sort(ops.begin(), ops.end(), [&](const CopyOp& a, const CopyOp& b) { return file_of(a) < file_of(b); });
  size_t i = 0;
  while (i < ops.size()) {
    const auto file = file_of(ops[i]);
    auto source = load_part(file.second, file.first, kinds);  // one file in memory at a time
    for (; i < ops.size() && file_of(ops[i]) == file; ++i) {
      const CopyOp& op = ops[i];
      const int64_t length = lengths[size_t(op.target)];
      for (size_t k = 0; k < kinds; ++k) {
        const at::Tensor& src = source[size_t(op.src_unit)][k];
        at::Tensor& dst = targets[size_t(op.target)][k];
        DS_CHECK(op.src_offset + op.length <= src.numel() && op.dst_offset + op.length <= length,
                 "copy plan out of bounds");
        if (!dst.defined() && op.src_offset == 0 && op.dst_offset == 0 && op.length == src.numel() &&
            op.length == length) {
          dst = src;  // the same layout as saved: take the loaded tensor, no copy
          continue;
        }
        if (!dst.defined()) dst = at::zeros({length}, at::kFloat);
        dst.narrow(0, op.dst_offset, op.length).copy_(src.narrow(0, op.src_offset, op.length));
      }
    }
  }
  for (size_t t = 0; t < targets.size(); ++t)
    for (auto& dst : targets[t])
      if (!dst.defined()) dst = at::zeros({lengths[t]}, at::kFloat);  // all padding
}

std::vector<UnitShard> CheckpointReader::load_ranges(const std::vector<UnitInfo>& model_units,
                                                     const std::vector<Range>& ranges,
                                                     const LoadOptions& options) const {
  check_model(model_units, options.whole_model, options.tensor_rank, options.tensor_size);
  const auto& names = manifest_.optimizer.state_names;
  if (options.optimizer_states && !options.expected_state_names.empty() &&
      options.expected_state_names != names)
    throw Error(ds::str("the checkpoint's optimizer ", manifest_.optimizer.type, " keeps states (",
                        join(names), ") but the engine's keeps (", join(options.expected_state_names),
                        "); load without optimizer states to take the weights only"));
  size_t kinds = options.optimizer_states ? 1 + names.size() : 1;
  const TensorReslice tensor = reslice_for(options.tensor_rank, options.tensor_size);
  std::vector<CopyOp> plan;
  if (tensor.same()) {
    plan = plan_copies(manifest_.units_of_tensor_rank(options.tensor_rank), manifest_.partition,
                       requests_for_ranges(model_units, ranges));
  } else {  // each saved tensor rank's slices supply the elements of this rank's slices they hold
    const auto per_rank = reslice_requests(manifest_.units_of_tensor_rank(0), model_units, tensor,
                                           requests_for_ranges(model_units, ranges));
    for (int s = 0; s < tensor.saved_size; ++s) {
      if (per_rank[size_t(s)].empty()) continue;
      auto ops = plan_copies(manifest_.units_of_tensor_rank(s), manifest_.partition, per_rank[size_t(s)]);
      plan.insert(plan.end(), ops.begin(), ops.end());
    }
  }
  std::vector<int64_t> lengths;
  for (const auto& r : ranges) lengths.push_back(r.length);
  std::vector<std::vector<at::Tensor>> targets;
  run_plan(plan, kinds, lengths, targets);
  std::vector<UnitShard> out(model_units.size());
  for (size_t u = 0; u < model_units.size(); ++u) {
    out[u].fp32 = targets[u][0];
    out[u].states.assign(targets[u].begin() + 1, targets[u].end());
  }
  return out;
}

std::vector<UnitShard> CheckpointReader::load_partition(const std::vector<UnitInfo>& model_units,
                                                        const Partition& partition, int index,
                                                        const LoadOptions& options) const {
  std::vector<Range> ranges;
  for (const auto& u : model_units) ranges.push_back(partition_range(u.padded_numel, partition, index));
  return load_ranges(model_units, ranges, options);
}

ModelStates CheckpointReader::load_model_states(int mp_rank) const {
  std::string name = model_states_name(mp_rank), path = file_path(name);
  detail::DictReader d(detail::load_pickle(path, file_info(name)), path);
  if (d.string("format") != detail::kModelFormat)
    throw Error(ds::str(path, ": not a deepspeed.cpp model-states file"));
  ModelStates out{d.dict("module").tensors(), d.dict("rng_states").tensors(), {}};
  if (d.has("optimizer_tensor_states")) out.optimizer_tensors = d.dict("optimizer_tensor_states").tensors();
  for (const auto& [rng, t] : out.rng_states)
    if (t.scalar_type() != at::kByte)
      throw Error(ds::str(path, ": RNG state ", rng, " is not a uint8 tensor"));
  return out;
}

std::optional<NamedTensors> CheckpointReader::load_rank_states(int dp_rank, int mp_rank) const {
  const std::string name = rank_states_name(dp_rank, mp_rank), path = file_path(name);
  if (!manifest_.find_file(name)) return std::nullopt;
  detail::DictReader d(detail::load_pickle(path, file_info(name)), path);
  if (d.string("format") != detail::kRankStatesFormat)
    throw Error(ds::str(path, ": not a deepspeed.cpp optimizer rank-states file"));
  return d.dict("states").tensors();
}

NamedTensors CheckpointReader::load_tensor_rank(int tensor_rank) const {
  const std::vector<UnitInfo> units = manifest_.units_of_tensor_rank(tensor_rank);
  std::vector<Request> requests;
  std::vector<int64_t> lengths;
  for (const auto& u : units)
    for (const auto& s : u.slots) {
      requests.push_back({s.name, 0, s.numel, int(lengths.size()), 0});
      lengths.push_back(s.numel);
    }
  std::vector<std::vector<at::Tensor>> targets;
  run_plan(plan_copies(units, manifest_.partition, requests), 1, lengths, targets);
  NamedTensors out;
  size_t i = 0;
  for (const auto& u : units)
    for (const auto& s : u.slots) out.emplace_back(s.name, targets[i++][0].view(s.shape));
  return out;
}

NamedTensors CheckpointReader::load_fp32_weights() const {
  NamedTensors whole = load_tensor_rank(0);
  if (manifest_.tp_world_size == 1) return whole;
  // Every other tensor rank's slices, joined to rank 0's as each parameter's split says.
  std::vector<std::map<std::string, at::Tensor>> others;
  for (int r = 1; r < manifest_.tp_world_size; ++r) {
    others.emplace_back();
    for (auto& [name, t] : load_tensor_rank(r)) others.back().emplace(name, t);
  }
  std::map<std::string, const SlotInfo*> split;
  for (const auto& u : manifest_.units)
    if (u.mp_rank % manifest_.tp_world_size == 0)
      for (const auto& s : u.slots) split.emplace(s.name, &s);
  for (auto& [name, t] : whole) {
    const SlotInfo& s = *split.at(name);
    if (s.split_dim < 0) continue;
    std::vector<at::Tensor> pieces{t};
    for (size_t r = 0; r < others.size(); ++r) {
      auto it = others[r].find(name);
      if (it == others[r].end()) throw Error(ds::str(tag_path_, ": tensor rank ", r + 1, " has no slice of ", name));
      pieces.push_back(it->second);
    }
    t = join_slices(pieces, s.split_dim, s.split_groups);
  }
  return whole;
}

}  // namespace ds::ckpt
