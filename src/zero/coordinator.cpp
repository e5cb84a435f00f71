#include "ds/zero/coordinator.h"

#include <ATen/ATen.h>
#include <torch/nn/module.h>

#include <algorithm>
#include <chrono>

#include "ds/common/error.h"
#include "ds/compress/quantize.h"

namespace ds::zero {

ParamCoordinator::ParamCoordinator(std::vector<FlatUnit*> units, std::shared_ptr<comm::Communicator> comm,
                                   CoordinatorOptions options)
    : units_(std::move(units)), comm_(std::move(comm)), options_(options), slots_(units_.size()) {
  int64_t largest = 0;
  for (size_t u = 0; u < units_.size(); ++u) {
    const FlatUnit& unit = *units_[u];
    largest = std::max(largest, unit.padded_numel());
    DS_CHECK(unit.sharded(), "unit ", unit.name(), " is not sharded");
    DS_CHECK(unit.shard_numel() == comm::chunk_of(unit.padded_numel(), comm_->size(), comm_->rank()).length,
             "unit ", unit.name(), " is sharded for another group than the coordinator's");
    DS_CHECK(options_.store || unit.shard_data().defined(), "unit ", unit.name(), " has no shard in memory and no store");
    for (const at::Tensor& p : unit.tensors()) unit_of_param_[p.unsafeGetTensorImpl()] = int(u);
  }
  pool_limit_bytes_ = 2 * largest * int64_t(sizeof(float));
  DS_CHECK(options_.quantize_group >= 0, "the quantization group must not be negative");
  if (options_.secondary)
    DS_CHECK(options_.secondary->size() <= comm_->size() && comm_->size() % options_.secondary->size() == 0,
             "the secondary group of ", options_.secondary->size(), " ranks does not divide the coordinator's ",
             comm_->size());
  gathered_once_.assign(units_.size(), false);
  first_forward_ = std::make_unique<Progress>(options_.report_progress, "ZeRO-3: gathering the units of the first forward",
                                              double(units_.size()), Progress::Unit::kCount, "units");
  // Persistent units are gathered once, here (collective: every rank builds the same units).
  for (size_t u = 0; u < units_.size(); ++u)
    if (persistent(int(u))) fetch(int(u));
  for (size_t u = 0; u < units_.size(); ++u)
    if (persistent(int(u))) wait(int(u));
  hooks_id_ = nn::register_hooks(this);
}

ParamCoordinator::~ParamCoordinator() {
  nn::unregister_hooks(hooks_id_);
  for (size_t u = 0; u < slots_.size(); ++u) {
    Slot& s = slots_[u];
    try {
      if (s.state == State::kInFlight) {
        s.work.wait();
        if (s.from_store) options_.store->give_back(int(u));
      }
    } catch (...) {
    }
  }
  try {
    if (options_.store) drop_reads();
  } catch (...) {
  }
}

bool ParamCoordinator::persistent(int u) const { return units_[size_t(u)]->numel() <= options_.persistence_threshold; }

bool ParamCoordinator::quantizes(int u) const {
  return options_.quantize_group > 0 && comm_->size() > 1 && !persistent(u);
}

std::vector<int> ParamCoordinator::units_of(torch::nn::Module& module) {
  auto it = units_of_module_.find(&module);
  if (it != units_of_module_.end()) return it->second;
  std::vector<int> out;
  for (const at::Tensor& p : module.parameters(/*recurse=*/true)) {
    auto found = unit_of_param_.find(p.unsafeGetTensorImpl());
    if (found != unit_of_param_.end() && std::find(out.begin(), out.end(), found->second) == out.end())
      out.push_back(found->second);
  }
  units_of_module_[&module] = out;
  return out;
}

void ParamCoordinator::fetch(int u, bool ahead, bool exact) {
  Slot& s = slots_[size_t(u)];
  if (s.state != State::kReleased) return;
  live_ += units_[size_t(u)]->padded_numel();
  stats_.peak_live = std::max(stats_.peak_live, live_);
  if (ahead) ++stats_.prefetched;
  issue(u, exact);
}

// The all-gather of unit u from this rank's shard: in memory, or a store's buffer (waiting
// for its read, started now unless read ahead). Collectives must be issued in the same order
// on every rank, so a gather is issued here, at its place in the trace, never when a read
// happens to complete.
void ParamCoordinator::issue(int u, bool exact) {
  Slot& s = slots_[size_t(u)];
  FlatUnit& unit = *units_[size_t(u)];
  s.state = State::kInFlight;
  ++stats_.gathers;
  if (s.secondary_valid && !exact) {  // hpZ: within the node, from the copies of the first gather
    s.source = Source::kSecondary;
    ++stats_.secondary;
    s.wire = take_buffer(unit.padded_numel(), unit.shard_dtype());
    s.work = options_.secondary->all_gather(s.wire, s.secondary);
    s.from_store = false;
    return;
  }
  s.from_store = options_.store != nullptr;
  at::Tensor source;
  if (s.from_store) {
    const auto start = std::chrono::steady_clock::now();
    options_.store->start_read(u);  // nothing if it was read ahead
    reads_ahead_.erase(u);
    source = options_.store->take(u);
    stats_.read_wait_s += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  } else {
    source = unit.shard_data();
  }
  if (quantizes(u) && !exact) {  // qwZ
    s.source = Source::kQuantized;
    ++stats_.quantized;
    s.work = compress::quantized_all_gather(*comm_, source, options_.quantize_group, s.wire);
    if (s.from_store) options_.store->give_back(u);  // quantized already: the shard is no longer read
    s.from_store = false;
    return;
  }
  s.source = Source::kPrimary;
  s.wire = take_buffer(unit.padded_numel(), unit.shard_dtype());
  if (comm_->size() == 1) {
    s.wire.copy_(source);
    if (s.from_store) options_.store->give_back(u);
    s.from_store = false;
  } else {
    s.work = comm_->all_gather(s.wire, source);
  }
}

// With a store: starts the reads of the units the trace needs after the gather window, at
// most max_reads_ahead at a time, so their shards are in memory when their gathers are issued.
void ParamCoordinator::read_ahead(size_t from) {
  if (!options_.store) return;
  for (size_t i = from; i < trace_.size() && int(reads_ahead_.size()) < options_.max_reads_ahead; ++i) {
    const int u = trace_[i];
    if (slots_[size_t(u)].state != State::kReleased || reads_ahead_.count(u)) continue;
    if (slots_[size_t(u)].secondary_valid) continue;  // hpZ: gathered from the copies, not from the disk
    options_.store->start_read(u);
    reads_ahead_.insert(u);
  }
}

// Reads started for this micro-batch and not used: their buffers go back (a step may rewrite
// the shards before the next one).
void ParamCoordinator::drop_reads() {
  for (int u : reads_ahead_) {
    options_.store->take(u);
    options_.store->give_back(u);
  }
  reads_ahead_.clear();
}

void ParamCoordinator::wait(int u) {
  Slot& s = slots_[size_t(u)];
  if (s.state == State::kAvailable) return;
  if (s.state == State::kReleased) fetch(u);
  auto start = std::chrono::steady_clock::now();
  s.work.wait();
  s.work = comm::Work();
  if (s.from_store) options_.store->give_back(u);
  s.from_store = false;
  stats_.wait_s += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  FlatUnit& unit = *units_[size_t(u)];
  at::Tensor gathered = s.wire;  // the shard dtype
  if (s.source == Source::kQuantized) {
    gathered = take_buffer(unit.padded_numel(), unit.shard_dtype());
    compress::dequantize_gathered(s.wire, comm_->size(), options_.quantize_group, gathered);
  }
  s.wire = at::Tensor();
  // hpZ: keep this rank's chunk of what the unit's gathers deliver (not a pin's exact weights
  // of a unit qwZ quantizes).
  if (options_.secondary && !s.secondary_valid && !persistent(u) && !(quantizes(u) && s.source == Source::kPrimary)) {
    const comm::Chunk c = comm::chunk_of(unit.padded_numel(), options_.secondary->size(), options_.secondary->rank());
    if (!s.secondary.defined()) s.secondary = at::empty({c.length}, gathered.options());
    s.secondary.copy_(gathered.slice(0, c.offset, c.offset + c.length));
    s.secondary_valid = true;
  }
  if (unit.dtype() == unit.shard_dtype()) {
    unit.attach(gathered);
  } else {  // e.g. bf16 shards, fp32 working weights: widened once
    at::Tensor full = take_buffer(gathered.numel(), unit.dtype());
    full.copy_(gathered);
    unit.attach(full);
    give_back(std::move(gathered));
  }
  s.state = State::kAvailable;
}

void ParamCoordinator::release(int u) {
  Slot& s = slots_[size_t(u)];
  if (s.state == State::kReleased) return;
  if (s.state != State::kAvailable) wait(u);  // a gather in flight writes into its buffer
  at::Tensor buffer = units_[size_t(u)]->params();
  units_[size_t(u)]->release();
  give_back(std::move(buffer));
  s.state = State::kReleased;
  live_ -= units_[size_t(u)]->padded_numel();
  ++stats_.releases;
}

// Gathered buffers are reused (the units of a transformer mostly share one size): no
// allocation, page faults and zeroing per gather, and the heap does not keep growing.
at::Tensor ParamCoordinator::take_buffer(int64_t numel, at::ScalarType dtype) {
  for (size_t i = 0; i < pool_.size(); ++i) {
    if (pool_[i].numel() != numel || pool_[i].scalar_type() != dtype) continue;
    at::Tensor t = std::move(pool_[i]);
    pool_.erase(pool_.begin() + std::ptrdiff_t(i));
    pooled_bytes_ -= int64_t(t.nbytes());
    return t;
  }
  return at::empty({numel}, at::TensorOptions().dtype(dtype));
}

void ParamCoordinator::give_back(at::Tensor t) {
  // Only a buffer nothing else still references (no view of it survives in a graph).
  if (!t.defined() || t.storage().use_count() != 1 || pooled_bytes_ + int64_t(t.nbytes()) > pool_limit_bytes_) return;
  pooled_bytes_ += int64_t(t.nbytes());
  pool_.push_back(std::move(t));
}

void ParamCoordinator::record(int u) {
  if (!in_micro_batch_) return;
  if (recording_) {
    trace_.push_back(u);
  } else if (trace_valid_ && !diverged_ && (pos_ >= trace_.size() || trace_[pos_] != u)) {
    diverged_ = true;  // another order than the recorded one: no prefetch; re-record next time
  }
  ++pos_;
}

// Gathers the next units of the trace ahead of their use: the window counts every unit the
// coming events need that is not in use now, gathered already or not, so at most about
// prefetch_elements are held ahead (DeepSpeed counts only what each call newly issues, which
// lets the window grow to max_live_parameters).
void ParamCoordinator::prefetch() {
  if (!in_micro_batch_ || !trace_valid_ || diverged_) return;
  int64_t ahead = 0;
  std::vector<bool> counted(units_.size(), false);
  size_t i = pos_;
  for (; i < trace_.size() && ahead < options_.prefetch_elements; ++i) {
    const int u = trace_[i];
    if (counted[size_t(u)] || slots_[size_t(u)].users > 0 || persistent(u)) continue;
    counted[size_t(u)] = true;
    const int64_t n = units_[size_t(u)]->padded_numel();
    if (slots_[size_t(u)].state == State::kReleased) {
      if (live_ + n > options_.max_live_elements) break;
      fetch(u, /*ahead=*/true);
    }
    ahead += n;
  }
  read_ahead(i);
}

// DeepSpeed's reuse rule: walking the trace from here, a unit met before `max_reuse_distance`
// elements have gone by is kept.
bool ParamCoordinator::reused_soon(int u) const {
  if (!in_micro_batch_ || !trace_valid_ || diverged_) return false;
  int64_t traversed = 0;
  for (size_t i = pos_; i < trace_.size() && traversed < options_.max_reuse_distance; ++i) {
    if (trace_[i] == u) return true;
    traversed += units_[size_t(trace_[i])]->padded_numel();
  }
  return false;
}

void ParamCoordinator::maybe_release(int u) {
  if (slots_[size_t(u)].users > 0 || persistent(u) || reused_soon(u)) return;
  release(u);
}

void ParamCoordinator::pre_forward(const std::vector<int>& units) {
  for (int u : units) record(u);
  for (int u : units) fetch(u);
  prefetch();
  for (int u : units) {
    wait(u);
    ++slots_[size_t(u)].users;
    if (gathered_once_count_ < units_.size() && !gathered_once_[size_t(u)]) {
      gathered_once_[size_t(u)] = true;
      first_forward_->advance();
      if (++gathered_once_count_ == units_.size()) first_forward_->finish();
    }
  }
}

void ParamCoordinator::post_forward(const std::vector<int>& units) {
  for (int u : units) --slots_[size_t(u)].users;
  for (int u : units) maybe_release(u);
}

void ParamCoordinator::pre_backward(const std::vector<int>& units) {
  for (int u : units) record(u);
  for (int u : units) fetch(u);
  prefetch();
  for (int u : units) wait(u);
}

void ParamCoordinator::after_reduce(int u) { maybe_release(u); }

void ParamCoordinator::begin_micro_batch() {
  if (in_micro_batch_) end_micro_batch();  // the previous forward had no backward (evaluation)
  in_micro_batch_ = true;
  pos_ = 0;
  diverged_ = false;
  recording_ = !trace_valid_;
  if (recording_) trace_.clear();
}

void ParamCoordinator::end_micro_batch() {
  if (recording_) {
    trace_valid_ = !trace_.empty();
  } else if (diverged_ || pos_ != trace_.size()) {
    trace_valid_ = false;  // re-record on the next micro-batch
  }
  recording_ = false;
  in_micro_batch_ = false;
  for (size_t u = 0; u < units_.size(); ++u) maybe_release(int(u));
  if (options_.store) drop_reads();
}

void ParamCoordinator::gather_all() {
  for (size_t u = 0; u < units_.size(); ++u) fetch(int(u));
  for (size_t u = 0; u < units_.size(); ++u) wait(int(u));
}

void ParamCoordinator::refresh() {
  std::vector<int> again;
  for (size_t u = 0; u < units_.size(); ++u) {
    if (slots_[u].state == State::kReleased) continue;
    DS_CHECK(slots_[u].users == 0 || persistent(int(u)), "unit ", units_[u]->name(), " is in use during an optimizer step");
    release(int(u));  // (a gather still in flight lands first, and may fill a copy)
    again.push_back(int(u));
  }
  for (Slot& s : slots_) s.secondary_valid = false;  // the weights changed: the copies are stale
  for (int u : again) fetch(u);
  for (int u : again) wait(u);
}

void ParamCoordinator::weights_changed(int u) { slots_[size_t(u)].secondary_valid = false; }

int64_t ParamCoordinator::secondary_bytes() const {
  int64_t bytes = 0;
  for (const Slot& s : slots_)
    if (s.secondary.defined()) bytes += int64_t(s.secondary.nbytes());
  return bytes;
}

void ParamCoordinator::pin(int u) {
  Slot& s = slots_[size_t(u)];
  if (s.state != State::kReleased && quantizes(u) && s.source != Source::kPrimary) {  // qwZ: explicit use needs the exact weights
    if (s.users > 0)
      throw Error(ds::str("unit ", units_[size_t(u)]->name(), " is in use by a forward with zero_quantized_weights, ",
                          "which computes with quantized weights; gather its parameters (gathered_parameters, a ",
                          "checkpoint save) outside the forward"));
    release(u);
  }
  fetch(u, /*ahead=*/false, /*exact=*/true);
  wait(u);
  ++slots_[size_t(u)].users;
}

void ParamCoordinator::unpin(int u) {
  Slot& s = slots_[size_t(u)];
  DS_CHECK(s.users > 0, "unit ", units_[size_t(u)]->name(), " is not pinned");
  --s.users;
  // Under qwZ the forward, backward and recompute compute with quantized weights: exact
  // weights a pin gathered do not stay for them.
  if (s.users == 0 && quantizes(u) && s.source == Source::kPrimary) release(u);
  else maybe_release(u);
}

}  // namespace ds::zero
