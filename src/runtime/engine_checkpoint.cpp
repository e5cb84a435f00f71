// Engine::save_checkpoint and Engine::load_checkpoint: the engine's side of checkpoints.
//
// The file layer (ds_ckpt) writes atomically, validates, checksums and reshapes; this file
// decides what each rank saves and loads for its ZeRO stage, and keeps the ranks in step.
// Every local phase (prepare, write, read) ends with an exchange of outcomes over the
// communicator: a failure on one rank (a full disk, a corrupt shard only it reads) throws on
// every rank with that rank's message, instead of leaving the others blocked in the next
// collective until a timeout.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <torch/nn/module.h>

#include <cstdio>
#include <cstring>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <sstream>
#include <unordered_set>

#include "ds/ckpt/checkpoint.h"
#include "ds/ckpt/checksum.h"
#include "ds/comm/agreement.h"
#include "ds/common/error.h"
#include "ds/common/progress.h"
#include "ds/common/strings.h"
#include "ds/offload/optimizer_swapper.h"
#include "ds/offload/param_swapper.h"
#include "ds/pipe/module.h"
#include "ds/runtime/engine.h"
#include "ds/tp/layers.h"

namespace ds {

namespace {

std::string join(const std::vector<std::string>& items) {
  std::string out;
  for (size_t i = 0; i < items.size(); ++i) out += (i ? ", " : "") + items[i];
  return out.empty() ? "none" : out;
}

// Whether every rank passed the same text (one all-reduce of two integers).
bool same_on_every_rank(comm::Communicator& comm, const std::string& text) {
  return comm::same_on_every_rank(comm, ckpt::xxh64(text.data(), text.size()));
}

// Runs `phase` on this rank, then every rank learns how it went everywhere. Returns the file
// each rank's phase wrote (name empty: none; an optimizer part or a model-states file, named
// by the writer's data- and model-parallel ranks), indexed by rank; throws ds::Error on every rank when `phase`
// threw on any, with the lowest failing rank's message.
std::vector<ckpt::FileInfo> on_every_rank(comm::Communicator& comm,
                                          const std::function<ckpt::FileInfo()>& phase, int dp_rank = 0,
                                          int mp_rank = 0) {
  ckpt::FileInfo mine;
  std::string error;
  try {
    mine = phase();
  } catch (const std::exception& e) {
    error = *e.what() ? e.what() : "unknown error";
  }
  const int world = comm.size();
  constexpr int kFields = 6;  // error length, the file written (0 none, 1 optimizer part, 2 model states), its bytes,
                              // its xxh64, dp rank, mp rank
  const int64_t kind = mine.name.empty() ? 0 : mine.name == ckpt::model_states_name(mp_rank) ? 2 : 1;
  at::Tensor own = at::tensor({int64_t(error.size()), kind, mine.bytes, int64_t(mine.xxh64),
                               int64_t(dp_rank), int64_t(mp_rank)},
                              at::kLong);
  at::Tensor all = at::empty({world * kFields}, at::kLong);
  comm.all_gather(all, own).wait();
  auto a = all.accessor<int64_t, 1>();
  for (int r = 0; r < world; ++r) {
    if (a[r * kFields] == 0) continue;
    std::string message = comm::broadcast_string(comm, error, r);
    throw Error(world > 1 ? ds::str("rank ", r, ": ", message) : message);
  }
  std::vector<ckpt::FileInfo> files(size_t(world), ckpt::FileInfo{});
  for (int r = 0; r < world; ++r)
    if (a[r * kFields + 1])
      files[size_t(r)] = {a[r * kFields + 1] == 2 ? ckpt::model_states_name(int(a[r * kFields + 5]))
                                                  : ckpt::optim_states_name(int(a[r * kFields + 4]), int(a[r * kFields + 5])),
                          a[r * kFields + 2], uint64_t(a[r * kFields + 3])};
  return files;
}

// Everything in the module's state dict that is not a trainable parameter of a unit
// (buffers, frozen parameters): the model-states file restores these.
std::vector<std::pair<std::string, at::Tensor>> non_unit_entries(torch::nn::Module& model,
                                                                 const std::vector<ckpt::UnitInfo>& units) {
  std::unordered_set<std::string> in_units;
  for (const auto& u : units)
    for (const auto& s : u.slots) in_units.insert(s.name);
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (const auto& p : model.named_parameters())
    if (!in_units.count(p.key())) out.emplace_back(p.key(), p.value());
  for (const auto& b : model.named_buffers()) out.emplace_back(b.key(), b.value());
  return out;
}

// Every rank's files, on every rank (one broadcast per rank; the lists are short).
std::vector<ckpt::FileInfo> gather_files(comm::Communicator& comm, const std::vector<ckpt::FileInfo>& mine) {
  std::string text;
  for (const auto& f : mine) text += ds::str(f.name, '\t', f.bytes, '\t', f.xxh64, '\n');
  std::vector<ckpt::FileInfo> all;
  for (int r = 0; r < comm.size(); ++r) {
    std::istringstream in(comm::broadcast_string(comm, text, r));
    ckpt::FileInfo f;
    while (std::getline(in, f.name, '\t') && in >> f.bytes >> f.xxh64) {
      all.push_back(f);
      in.ignore(1);  // the newline
    }
  }
  return all;
}

const at::Tensor* find_tensor(const ckpt::NamedTensors& tensors, const std::string& name) {
  for (const auto& [n, t] : tensors)
    if (n == name) return &t;
  return nullptr;
}

}  // namespace

void Engine::require_step_boundary(const char* what) const {
  const int64_t gas = config_.gradient_accumulation_steps;
  if (micro_step_ != global_step_ * gas)
    throw Error(ds::str(what, " inside an accumulation window (", micro_step_ - global_step_ * gas, " of ",
                        gas, " micro-batches done, their gradients are not saved): call it after step()"));
}

// DeepSpeed's checkpoint.tag_validation: the ranks must save under one tag. "Fail" refuses
// differing tags; otherwise rank 0's tag is used ("Warn" says so), so the parts of one save
// never land in different directories.
std::string Engine::agreed_tag(const std::string& tag) {
  if (same_on_every_rank(*groups_.world, tag)) return tag;
  if (config_.checkpoint.tag_validation == TagValidation::kFail)
    throw Error(ds::str("the ranks passed different checkpoint tags (this rank: '", tag,
                        "') and checkpoint.tag_validation is \"Fail\""));
  std::string agreed = comm::broadcast_string(*groups_.world, tag, 0);
  if (groups_.world->rank() == 0 && config_.checkpoint.tag_validation == TagValidation::kWarn)
    std::fprintf(stderr, "warning: the ranks passed different checkpoint tags; saving under rank 0's '%s'\n",
                 agreed.c_str());
  return agreed;
}

std::vector<ckpt::UnitInfo> Engine::checkpoint_units() const {
  // With tensor parallelism each rank holds a slice of the split parameters (same name, the
  // slice's shape): the manifest records how each is split, so to-fp32 can join them.
  std::map<std::string, tp::Split> splits;
  if (groups_.tensor->size() > 1)
    for (const tp::Split& s : tp::find_sharded_parameters(*model_)) splits[s.name] = s;
  std::vector<ckpt::UnitInfo> out;
  for (const auto& s : units_) {
    const zero::FlatUnit& u = *s.unit;
    ckpt::UnitInfo info{u.name(), u.numel(), u.padded_numel(), {}, groups_.model_rank()};
    for (const zero::ParamSlot& p : u.slots()) {
      auto split = splits.find(p.name);
      info.slots.push_back({p.name, p.offset, p.numel, p.shape, split == splits.end() ? -1 : split->second.dim,
                            split == splits.end() ? 1 : split->second.groups});
    }
    out.push_back(std::move(info));
  }
  return out;
}

// What the checkpoint holds: every model-parallel rank's units (a pipeline stage's layers),
// each tied layer once (from the first stage holding it), gathered over the model group.
std::vector<ckpt::UnitInfo> Engine::checkpoint_units_everywhere() const {
  std::vector<ckpt::UnitInfo> mine;
  const std::vector<ckpt::UnitInfo> all = checkpoint_units();
  for (size_t u = 0; u < all.size(); ++u)
    if (is_primary_copy(u)) mine.push_back(all[u]);
  comm::Communicator& model = *groups_.model;
  if (model.size() == 1) return mine;
  const std::string text = ckpt::units_to_json(mine).dump();
  std::vector<ckpt::UnitInfo> out;
  for (int r = 0; r < model.size(); ++r) {
    std::vector<ckpt::UnitInfo> theirs =
        ckpt::units_from_json(comm::broadcast_string(model, text, r), ds::str("the units of model-parallel rank ", r));
    out.insert(out.end(), theirs.begin(), theirs.end());
  }
  return out;
}

ckpt::Manifest Engine::checkpoint_layout(const std::string& tag, const nlohmann::json& client_state) const {
  if (!client_state.is_object() && !client_state.is_null())  // null: `{}` as an argument
    throw Error(
        ds::str("save_checkpoint: client_state must be a JSON object, got ", client_state.type_name()));
  ckpt::Manifest m;
  m.tag = tag;
  m.dp_world_size = dp_size();
  m.pp_world_size = groups_.pipe->size();
  m.tp_world_size = groups_.tensor->size();
  m.zero_stage = plan_.stage;
  m.precision = plan_.precision.name;
  // Stage 0 keeps whole units on every rank: one part. Stages 1-3: each rank's chunk_of.
  m.partition = {ckpt::PartitionScheme::kTensorSplit, plan_.stage == 0 ? 1 : dp_size()};
  m.units = checkpoint_units_everywhere();
  m.optimizer = {optimizer_type_name(config_.optimizer.type), optimizer_->state_names()};
  ckpt::EngineState& e = m.engine;
  e.global_steps = global_step_;
  e.global_samples = global_samples_;
  e.micro_steps = micro_step_;
  e.skipped_steps = global_step_ - optimizer_steps_;
  e.optimizer_steps = optimizer_steps_;
  e.scheduler_iteration = schedule_iteration_;
  const LossScaler::State ls = scaler_.state();
  e.loss_scaler = {ls.scale, ls.hysteresis_left, ls.iteration, ls.last_overflow_iteration};
  e.client = client_state.is_null() ? nlohmann::json::object() : client_state;
  return m;
}

// Collective at stage 3 with stage3_gather_16bit_weights_on_model_save: the units are
// gathered one at a time and rank 0 keeps a copy (in the training precision) of each. Without
// it, stage 3's model states hold only what the units do not (the weights are in the shards).
ckpt::ModelStates Engine::model_states() {
  ckpt::ModelStates s;
  // A PipelineModule's weights go to the layer files; stage 3's are sharded.
  if (plan_.stage == 3 || dynamic_cast<pipe::PipelineModuleImpl*>(model_.get())) {
    for (auto& [name, t] : non_unit_entries(*model_, checkpoint_units())) s.module.emplace_back(name, t.detach());
    if (plan_.stage == 3 && config_.zero_optimization.stage3_gather_16bit_weights_on_model_save) {
      const at::ScalarType dtype = plan_.precision.param;
      for (size_t u = 0; u < units_.size(); ++u) {
        const zero::FlatUnit& unit = *units_[u].unit;
        coordinator_->pin(int(u));
        if (groups_.world->rank() == 0)
          for (size_t i = 0; i < unit.slots().size(); ++i)
            s.module.emplace_back(unit.slots()[i].name, unit.tensors()[i].detach().to(dtype, false, true));
        coordinator_->unpin(int(u));
      }
    }
  } else {
    for (const auto& p : model_->named_parameters()) s.module.emplace_back(p.key(), p.value().detach());
    for (const auto& b : model_->named_buffers()) s.module.emplace_back(b.key(), b.value().detach());
  }
  at::Generator gen = at::detail::getDefaultCPUGenerator();
  std::lock_guard<std::mutex> lock(gen.mutex());
  s.rng_states.emplace_back("cpu", gen.get_state());
  s.optimizer_tensors = optimizer_->tensor_states();
  return s;
}

// This rank's masters and elementwise optimizer states (states that reset on load are not saved).
std::vector<ckpt::UnitShard> Engine::optimizer_part() const {
  const std::vector<optim::StateSpec> specs = optimizer_->state_specs();
  std::vector<ckpt::UnitShard> part;
  Progress progress(swapper_ && groups_.world->rank() == 0, "checkpoint: reading the optimizer states from the swap file",
                    double(units_.size()), Progress::Unit::kCount, "units");
  for (size_t u = 0; u < units_.size(); ++u) {
    progress.advance();
    if (!is_primary_copy(u)) continue;  // a tied layer's copy: the first stage holding it saves it
    const UnitState& s = units_[u];
    // Under bf16 compute the stage 0-2 master is fp32 already; the file stores fp32.
    ckpt::UnitShard shard{s.master.defined() ? s.master.to(at::kFloat) : at::Tensor(), {}};
    if (swapper_) {  // swapped: read back from disk
      swapper_->read_unit(u, s.master.defined() ? nullptr : &shard.fp32, &shard.states);
    } else {
      for (size_t k = 0; k < specs.size(); ++k)
        if (specs[k].kind == optim::StateSpec::Kind::kElementwise) shard.states.push_back(s.states[k]);
    }
    part.push_back(std::move(shard));
  }
  progress.finish();
  return part;
}

std::string Engine::save_checkpoint(const std::string& dir, std::string tag,
                                    const nlohmann::json& client_state) {
  require_step_boundary("save_checkpoint");
  if (tag.empty()) tag = ds::str("global_step", global_step_);  // DeepSpeed's default tag
  on_every_rank(*groups_.world, [&] {
    ckpt::check_tag(tag);
    return ckpt::FileInfo{};
  });
  tag = agreed_tag(tag);
  comm::Communicator& world = *groups_.world;
  const int rank = world.rank(), dp = dp_rank(), mp = groups_.model_rank();
  // 0. This rank's part, checked before anything on disk changes: a NaN checkpoint would
  // replace the last good one as `latest`.
  std::vector<ckpt::UnitShard> part;
  on_every_rank(world, [&] {
    part = optimizer_part();
    size_t k = 0;  // part holds the primary copies' shards, in unit order
    for (size_t u = 0; u < units_.size(); ++u) {
      if (!is_primary_copy(u)) continue;
      const at::Tensor& fp32 = part[k++].fp32;
      if (fp32.defined() && !at::isfinite(fp32).all().item<bool>())
        throw Error(ds::str("refusing to save ", dir, "/", tag, ": the fp32 weights of ", units_[u].unit->name(),
                            " hold NaN or inf (step ", global_step_, "); ", dir, "/latest stays on the last good save"));
    }
    return ckpt::FileInfo{};
  });
  std::optional<ckpt::CheckpointWriter> writer;
  // 1. Rank 0 creates the tag directory (dropping a stale manifest) before anyone writes.
  on_every_rank(world, [&] {
    writer.emplace(dir, checkpoint_layout(tag, client_state));  // rank 0's client_state is saved
    if (rank == 0) writer->prepare();
    return ckpt::FileInfo{};
  });
  // 2. The first data-parallel rank of each model-parallel rank (pipeline stage x tensor
  // shard) writes its weights and RNG state, and a PipelineModule's layers as DeepSpeed's
  // per-layer files; each rank owning a part writes it.
  ckpt::ModelStates states = model_states();  // collective at stage 3
  std::vector<ckpt::FileInfo> layer_files;
  std::vector<ckpt::FileInfo> parts = on_every_rank(world, [&] {
    if (dp != 0) return ckpt::FileInfo{};
    if (auto* module = dynamic_cast<pipe::PipelineModuleImpl*>(model_.get()))
      for (const auto& [index, layer] : module->saved_layers()) {
        ckpt::NamedTensors state;
        for (const auto& p : layer->named_parameters()) state.emplace_back(p.key(), p.value().detach());
        for (const auto& b : layer->named_buffers()) state.emplace_back(b.key(), b.value().detach());
        layer_files.push_back(writer->write_layer_states(index, groups_.coord.tensor, state));
      }
    return writer->write_model_states(states, mp);
  }, dp, mp);
  if (dynamic_cast<pipe::PipelineModuleImpl*>(model_.get())) {  // the same model type on every rank
    const std::vector<ckpt::FileInfo> all_layer_files = gather_files(world, layer_files);
    parts.insert(parts.end(), all_layer_files.begin(), all_layer_files.end());
  }
  std::vector<ckpt::FileInfo> optim_parts = on_every_rank(world, [&] {
    if (dp >= writer->layout().partition.count) return ckpt::FileInfo{};
    return writer->write_optimizer_part(dp, part, mp);
  }, dp, mp);
  parts.insert(parts.end(), optim_parts.begin(), optim_parts.end());
  // Each rank's own optimizer states (1-bit Adam's error feedback), when it has any.
  std::vector<ckpt::FileInfo> rank_files;
  on_every_rank(world, [&] {
    const ckpt::NamedTensors states = optimizer_->rank_states();
    if (!states.empty()) rank_files.push_back(writer->write_rank_states(dp, mp, states));
    return ckpt::FileInfo{};
  });
  const std::vector<ckpt::FileInfo> all_rank_files = gather_files(world, rank_files);
  parts.insert(parts.end(), all_rank_files.begin(), all_rank_files.end());
  // 3. Rank 0 commits (manifest, then `latest`) with every file's size and checksum. The
  // exchange that ends this phase is the closing barrier: no rank returns before `latest`
  // names the new tag, or every rank throws.
  on_every_rank(world, [&] {
    if (rank != 0) return ckpt::FileInfo{};
    std::vector<ckpt::FileInfo> files;
    for (const auto& f : parts)
      if (!f.name.empty()) files.push_back(f);
    writer->commit(files);
    return ckpt::FileInfo{};
  });
  return writer->tag_path();
}

// The model-states file of this rank's model-parallel rank; saved at another pipeline size,
// the entries of every stage's file (the names are global) and this rank's RNG state if its
// model-parallel rank saved one (else the first's).
ckpt::ModelStates Engine::load_model_states_for_this_rank(const ckpt::CheckpointReader& reader) const {
  const ckpt::Manifest& m = reader.manifest();
  const int mp = groups_.model_rank();
  const bool same_tensor = m.tp_world_size == groups_.tensor->size();
  if (m.pp_world_size == groups_.pipe->size() && same_tensor) return reader.load_model_states(mp);
  // Saved at another tensor size: the entries of saved tensor rank (this rank mod the saved
  // size); the split weights themselves come from the optimizer files, resliced.
  const int tensor = groups_.coord.tensor % m.tp_world_size;
  const bool same_pipe = m.pp_world_size == groups_.pipe->size();
  ckpt::ModelStates merged;
  for (int r : m.mp_ranks()) {
    if (r % m.tp_world_size != tensor) continue;  // another tensor rank's slices
    if (same_pipe && r / m.tp_world_size != groups_.coord.pipe) continue;  // another stage's layers
    ckpt::ModelStates s = reader.load_model_states(r);
    merged.module.insert(merged.module.end(), s.module.begin(), s.module.end());
    merged.optimizer_tensors.insert(merged.optimizer_tensors.end(), s.optimizer_tensors.begin(), s.optimizer_tensors.end());
    if (merged.rng_states.empty() || (same_tensor && r == mp)) merged.rng_states = s.rng_states;
  }
  return merged;
}

// Every parameter of the checkpoint (this tensor rank's slices) is held by some stage of this
// model (collective over the pipe group; the same verdict on every rank).
void Engine::check_stages_cover(const ckpt::Manifest& manifest) const {
  std::unordered_set<std::string> mine;
  for (const auto& u : checkpoint_units())
    for (const auto& slot : u.slots) mine.insert(slot.name);
  std::vector<std::string> names;
  for (const auto& u : manifest.units_of_tensor_rank(groups_.coord.tensor % manifest.tp_world_size))
    for (const auto& slot : u.slots) names.push_back(slot.name);
  at::Tensor covered = at::zeros({int64_t(names.size())}, at::kInt);
  for (size_t i = 0; i < names.size(); ++i) covered[int64_t(i)] = int(mine.count(names[i]));
  groups_.pipe->all_reduce(covered, comm::ReduceOp::Max).wait();
  for (size_t i = 0; i < names.size(); ++i)
    if (covered[int64_t(i)].item<int>() == 0)
      throw Error(ds::str("the checkpoint does not match the model: its parameter ", names[i],
                          " is in no pipeline stage of this model"));
}

void Engine::check_model_states(const ckpt::ModelStates& states) const {
  for (const auto& [name, t] : non_unit_entries(*model_, checkpoint_units())) {
    const at::Tensor* saved = find_tensor(states.module, name);
    if (!saved)
      throw Error(ds::str("the checkpoint does not match the model: its model states have no ", name,
                          " (shape ", t.sizes(), " in the model)"));
    if (saved->sizes() != t.sizes())
      throw Error(ds::str("the checkpoint does not match the model: ", name, " has shape ", saved->sizes(),
                          " in the checkpoint but ", t.sizes(), " in the model"));
  }
}

void Engine::restore_model_states(const ckpt::ModelStates& states) {
  at::NoGradGuard no_grad;
  for (auto& [name, t] : non_unit_entries(*model_, checkpoint_units()))
    t.copy_(*find_tensor(states.module, name));
  if (const at::Tensor* rng = find_tensor(states.rng_states, "cpu")) {
    at::Generator gen = at::detail::getDefaultCPUGenerator();
    std::lock_guard<std::mutex> lock(gen.mutex());
    gen.set_state(*rng);
  }
}

void Engine::restore_optimizer_part(const std::vector<ckpt::UnitShard>& part) {
  const std::vector<optim::StateSpec> specs = optimizer_->state_specs();
  Progress progress(swapper_ && groups_.world->rank() == 0, "checkpoint: writing the optimizer states to the swap file",
                    double(units_.size()), Progress::Unit::kCount, "units");
  for (size_t u = 0; u < units_.size(); ++u) {
    progress.advance();
    UnitState& s = units_[u];
    if (s.master.defined()) s.master.copy_(part[u].fp32);  // under fp32 a view: this writes the weights
    if (swapper_) swapper_->write_unit(u, part[u].fp32, part[u].states);
    std::vector<at::Tensor> fresh;
    size_t saved = 0;
    for (size_t k = 0; k < s.states.size(); ++k) {
      if (specs[k].kind == optim::StateSpec::Kind::kElementwise) {
        s.states[k].copy_(part[u].states[saved++]);
      } else {  // not in the checkpoint: starts again
        if (fresh.empty()) fresh = optimizer_->init_state(s.layout.own.length);
        s.states[k].copy_(fresh[k]);
      }
    }
    set_working(u, part[u].fp32);
    s.unit->zero_grad();
    if (s.grad_shard.defined()) s.grad_shard.zero_();
  }
  progress.finish();
  loss_sum_ = 0.0;
  if (param_swapper_) param_swapper_->flush();
  if (coordinator_) coordinator_->refresh();
  else if (plan_.stage > 0) gather_parameters();  // every rank loaded its chunk: rebuild the full weights
}

// The optimizer's per-rank states come back only into the layout that saved them; otherwise
// they start again, with a warning when the checkpoint had some or another optimizer saved it.
void Engine::restore_rank_states(const ckpt::Manifest& manifest,
                                 const std::optional<std::vector<std::pair<std::string, at::Tensor>>>& saved) {
  if (saved) {
    optimizer_->load_rank_states(*saved, [this](const std::function<void(optim::Segment&)>& fn) { for_each_segment(fn); });
    return;
  }
  optimizer_->reset_rank_states();
  if (groups_.world->rank() != 0) return;
  const std::string mine = optimizer_type_name(config_.optimizer.type), theirs = manifest.optimizer.type;
  bool had_rank_states = false;
  for (const auto& f : manifest.files) had_rank_states |= ckpt::is_rank_states_name(f.name);
  const bool compressing = mine == "OneBitAdam" || mine == "ZeroOneAdam" || mine == "OneBitLamb";
  if (theirs != mine && (compressing || had_rank_states))
    std::fprintf(stderr, "warning: the checkpoint was saved by optimizer %s and this run uses %s: %s\n", theirs.c_str(),
                 mine.c_str(), compressing ? "the momentum and variance load, the error feedback starts at zero"
                                           : "its per-rank states (error feedback, 0/1 Adam's local steps) are dropped");
  else if (had_rank_states)
    std::fprintf(stderr, "warning: the checkpoint was saved by %d data-parallel ranks x %d pipeline stages x %d tensor ranks "
                 "and this run has %d x %d x %d: each rank's own optimizer states (error feedback, 0/1 Adam's local steps since "
                 "the last sync) start again from rank 0's\n",
                 manifest.dp_world_size, manifest.pp_world_size, manifest.tp_world_size, dp_size(), groups_.pipe->size(),
                 groups_.tensor->size());
}

void Engine::restore_engine_state(const ckpt::Manifest& manifest) {
  const ckpt::EngineState& e = manifest.engine;
  global_step_ = e.global_steps;
  global_samples_ = e.global_samples;
  optimizer_steps_ = e.optimizer_steps;
  schedule_iteration_ = e.scheduler_iteration;
  // Saves happen at step boundaries; under this run's accumulation (which may differ from
  // the saved run's) the boundary after global_step_ steps is here.
  micro_step_ = global_step_ * config_.gradient_accumulation_steps;
  if (plan_.precision.loss_scaling && manifest.precision == "fp16") {
    const auto& s = e.loss_scaler;
    scaler_.load({s.scale, s.hysteresis_left, s.iteration, s.last_overflow_iteration});
  }  // else: a fresh scaler, as configured (the checkpoint was not an fp16 run)
  forward_s_ = backward_s_ = backward_comm_s_ = gather_wait_s_ = read_wait_s_ = 0.0;
  last_step_time_ = std::chrono::steady_clock::now();
  steps_timed_ = 0, recent_step_s_ = 0;  // the next step warms up again
}

LoadedCheckpoint Engine::load_checkpoint(const std::string& dir, std::string tag) {
  require_step_boundary("load_checkpoint");
  std::optional<ckpt::CheckpointReader> reader;
  std::vector<ckpt::UnitShard> part;
  ckpt::ModelStates states;
  std::optional<ckpt::NamedTensors> rank_states;
  // Read and check everything first; the engine changes only after every rank succeeded.
  on_every_rank(*groups_.world, [&] {
    reader.emplace(dir, tag);
    const std::vector<ckpt::UnitInfo> units = checkpoint_units();
    const ckpt::Manifest& m = reader->manifest();
    // A pipeline stage holds part of the model: the stages together must cover the checkpoint
    // (checked below). Parameter names are global (layer indices), so any stage count loads.
    // A tensor rank reads its own slices, or at another tensor size cuts its slices from the
    // saved ones.
    reader->check_model(units, /*whole=*/groups_.pipe->size() == 1, groups_.coord.tensor, groups_.tensor->size());
    const ckpt::OptimizerInfo& saved = reader->manifest().optimizer;
    const std::vector<std::string> names = optimizer_->state_names();
    if (saved.state_names != names)
      throw Error(ds::str("the checkpoint's optimizer ", saved.type, " keeps states (",
                          join(saved.state_names), ") but this engine's ",
                          optimizer_type_name(config_.optimizer.type), " keeps (", join(names), ")"));
    const bool sharded = plan_.stage > 0;
    ckpt::LoadOptions options;
    options.whole_model = groups_.pipe->size() == 1;
    options.tensor_rank = groups_.coord.tensor;
    options.tensor_size = groups_.tensor->size();
    part = reader->load_partition(units, {ckpt::PartitionScheme::kTensorSplit, sharded ? dp_size() : 1},
                                  sharded ? dp_rank() : 0, options);
    states = load_model_states_for_this_rank(*reader);
    check_model_states(states);
    optimizer_->check_tensor_states(states.optimizer_tensors);
    if (m.dp_world_size == dp_size() && m.pp_world_size == groups_.pipe->size() &&
        m.tp_world_size == groups_.tensor->size())
      rank_states = reader->load_rank_states(dp_rank(), groups_.model_rank());
    return ckpt::FileInfo{};
  });
  if (!same_on_every_rank(*groups_.world, reader->tag()))  // e.g. `latest` moved while the ranks read it
    throw Error(ds::str("the ranks loaded different checkpoint tags from ", dir,
                        " (this rank: ", reader->tag(), ")"));
  if (groups_.pipe->size() > 1) check_stages_cover(reader->manifest());
  // Model states first: a name the units do not hold may still alias a unit's weights (a tied
  // parameter); the exact fp32 masters written next then have the last word.
  restore_model_states(states);
  restore_optimizer_part(part);
  restore_rank_states(reader->manifest(), rank_states);
  optimizer_->load_tensor_states(states.optimizer_tensors);
  restore_engine_state(reader->manifest());
  return {reader->tag_path(), reader->tag(), global_step_, reader->engine_state().client};
}

}  // namespace ds
