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

void CompressedUnits::reset() {
  units_.clear();
  saved_.clear();
}

}  // namespace ds::optim
