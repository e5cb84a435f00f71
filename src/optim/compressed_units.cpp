#include "compressed_units.h"

#include <ATen/ATen.h>

#include "ds/common/error.h"
#include "ds/common/strings.h"

namespace ds::optim {

namespace {

bool is_error_name(const std::string& name) {
  auto ends_with = [&](const std::string& s) {
    return name.size() >= s.size() && name.compare(name.size() - s.size(), s.size(), s) == 0;
  };
  return name.rfind("unit", 0) == 0 && (ends_with(".worker_error") || ends_with(".server_error"));
}

}  // namespace

WholeMomentum whole_momentum(const Segment& s, comm::Communicator& group, const char* optimizer) {
  WholeMomentum c;
  at::Tensor& exp_avg = (*s.states)[0];
  const at::Tensor& exp_avg_sq = (*s.states)[1];
  if (exp_avg.numel() == s.unit_padded_numel) {  // this rank holds the whole unit (stage 0)
    c.momentum = exp_avg.narrow(0, 0, s.unit_numel);  // contiguous from element 0
    c.zero_variance = exp_avg_sq.narrow(0, 0, s.unit_numel).eq(0);
    return c;
  }
  if (exp_avg.numel() * group.size() != s.unit_padded_numel)
    throw Error(ds::str(optimizer, ": unit ", s.unit, "'s part has ", exp_avg.numel(), " elements; ", group.size(),
                        " ranks of that do not make its ", s.unit_padded_numel));
  at::Tensor full = at::empty({s.unit_padded_numel}, at::kFloat);
  group.all_gather(full, exp_avg).wait();
  c.momentum = full.narrow(0, 0, s.unit_numel).clone();
  c.owned = true;
  at::Tensor zero = at::empty({s.unit_padded_numel}, at::kByte);
  group.all_gather(zero, exp_avg_sq.eq(0).to(at::kByte)).wait();
  c.zero_variance = zero.narrow(0, 0, s.unit_numel).to(at::kBool);
  return c;
}

compress::OneBitAllReduce* CompressedUnits::get(size_t unit, int64_t numel, comm::Communicator& group) {
  if (group.size() == 1) return nullptr;
  auto it = units_.find(unit);
  if (it != units_.end()) return it->second.get();
  auto reduce = std::make_unique<compress::OneBitAllReduce>(numel, group.shared_from_this());
  auto take = [&](const char* what, at::Tensor& into) {
    auto saved = saved_.find(ds::str("unit", unit, ".", what));
    if (saved == saved_.end()) return;
    if (saved->second.sizes() != into.sizes())
      throw Error(ds::str("the checkpoint's ", what, " of unit ", unit, " has shape ", saved->second.sizes(),
                          " but this run's has ", into.sizes(), "; the checkpoint is from another model or layout"));
    into.copy_(saved->second);
    saved_.erase(saved);
  };
  take("worker_error", reduce->worker_error());
  take("server_error", reduce->server_error());
  return units_.emplace(unit, std::move(reduce)).first->second.get();
}

void CompressedUnits::zero_errors() {
  for (auto& [u, r] : units_) {
    r->worker_error().zero_();
    r->server_error().zero_();
  }
  saved_.clear();
}

void CompressedUnits::append_states(NamedTensors& out) const {
  for (const auto& [u, r] : units_) {
    out.emplace_back(ds::str("unit", u, ".worker_error"), r->worker_error());
    out.emplace_back(ds::str("unit", u, ".server_error"), r->server_error());
  }
  for (const auto& [name, t] : saved_) out.emplace_back(name, t);  // loaded, its unit not compressed since
}

void CompressedUnits::load(const NamedTensors& states) {
  reset();
  for (const auto& [name, t] : states)
    if (is_error_name(name)) saved_[name] = t;
}

int64_t CompressedUnits::bytes() const {
  int64_t n = 0;
  for (const auto& [u, r] : units_) n += int64_t(r->worker_error().nbytes() + r->server_error().nbytes());
  for (const auto& [name, t] : saved_) n += int64_t(t.nbytes());
  return n;
}

int64_t CompressedUnits::bytes_of_unit(int64_t numel, int ranks) {
  if (ranks == 1) return 0;  // nothing is compressed
  return 4 * (numel + compress::OneBitAllReduce::chunk_of(numel, ranks));
}

void CompressedUnits::reset() {
  units_.clear();
  saved_.clear();
}

CompressedMomentum::CompressedMomentum(OptimizerConfig c, std::string label)
    : FlatOptimizer(std::move(c)), label_(std::move(label)) {
  if (config_.freeze_step < 1)
    throw ConfigError(ds::str("optimizer.params.freeze_step must be >= 1 (the variance is estimated during the "
                              "warm-up and frozen after it), got ", config_.freeze_step));
}

std::string CompressedMomentum::phase(int64_t step) const {
  if (step < 1) return "";
  return label_ + (compressed(step) ? ": compressed" : ": warm-up");
}

void CompressedMomentum::check_own_gradients(const StepContext& ctx) const {
  if (ctx.sync != zero::GradSync::kNone)
    throw Error(ds::str(label_, " step ", ctx.args.step, ": the gradients were averaged (", zero::to_string(ctx.sync),
                        "), but the compressed phase needs each rank's own"));
}

std::vector<std::pair<std::string, at::Tensor>> CompressedMomentum::rank_states() const {
  CompressedUnits::NamedTensors out;
  errors_.append_states(out);
  return out;
}

void CompressedMomentum::load_rank_states(const std::vector<std::pair<std::string, at::Tensor>>& states,
                                          const SegmentVisitor&) {
  units_.clear();  // the whole momentum is rebuilt from the loaded shards
  errors_.load(states);
}

void CompressedMomentum::reset_rank_states() {
  units_.clear();
  errors_.reset();
}

int64_t CompressedMomentum::held_bytes() const {
  int64_t n = errors_.bytes();
  for (const auto& [u, c] : units_)
    n += int64_t(c.whole.zero_variance.nbytes()) + (c.whole.owned ? int64_t(c.whole.momentum.nbytes()) : 0);
  return n;
}

int64_t CompressedMomentum::held_bytes_of_unit(int64_t numel, int64_t padded, int64_t own, int ranks) const {
  return numel + (own != padded ? 4 * numel : 0) + CompressedUnits::bytes_of_unit(numel, ranks);
}

CompressedMomentum::UnitComm& CompressedMomentum::unit_comm(const Segment& s, comm::Communicator& group) {
  auto it = units_.find(s.unit);
  if (it != units_.end()) return it->second;
  if (!s.unit_grad.defined()) throw Error(ds::str(label_, ": unit ", s.unit, " keeps no whole gradient on this rank"));
  UnitComm c{errors_.get(s.unit, s.unit_numel, group), whole_momentum(s, group, label_.c_str())};
  return units_.emplace(s.unit, std::move(c)).first->second;
}

}  // namespace ds::optim
