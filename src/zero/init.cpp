#include "ds/runtime/zero_init.h"

#include <ATen/ATen.h>
#include <torch/nn/module.h>

#include <mutex>
#include <unordered_map>
#include <unordered_set>

#include "ds/common/error.h"

namespace ds {

namespace {

struct Partitioned {
  std::mutex mu;
  std::unordered_map<const void*, std::unique_ptr<FlatUnit>> by_first_param;
  std::unordered_set<const void*> params;  // every parameter some Init unit holds
};

Partitioned& partitioned() {
  static Partitioned p;
  return p;
}

}  // namespace

Init::Init(std::shared_ptr<comm::Communicator> comm, const Config& config)
    : comm_(std::move(comm)), enabled_(config.zero_optimization.stage == 3) {
  if (enabled_) previous_ = zero::set_build_hook(this);
}

Init::~Init() {
  if (enabled_) zero::set_build_hook(previous_);
}

void Init::unit_built(torch::nn::Module& module) {
  Partitioned& reg = partitioned();
  NamedParams params;
  {
    std::lock_guard<std::mutex> lock(reg.mu);
    for (const auto& item : module.named_parameters(/*recurse=*/true)) {
      const at::Tensor& p = item.value();
      if (p.requires_grad() && !reg.params.count(p.unsafeGetTensorImpl())) params.emplace_back(item.key(), p);
    }
  }
  if (params.empty()) return;
  const int world = comm_->size();
  auto unit = std::make_unique<FlatUnit>(module.name(), params, kUnitPadding * world, /*persistent_grads=*/false);
  at::Tensor full = unit->params();
  comm_->broadcast(full, 0).wait();  // every rank starts from rank 0's weights
  unit->shard(world, comm_->rank());
  std::lock_guard<std::mutex> lock(reg.mu);
  for (const at::Tensor& p : unit->tensors()) reg.params.insert(p.unsafeGetTensorImpl());
  reg.by_first_param[unit->tensors().front().unsafeGetTensorImpl()] = std::move(unit);
}

std::unique_ptr<FlatUnit> take_partitioned_unit(const UnitSpec& spec) {
  Partitioned& reg = partitioned();
  std::lock_guard<std::mutex> lock(reg.mu);
  if (spec.params.empty()) return nullptr;
  auto it = reg.by_first_param.find(spec.params.front().second.unsafeGetTensorImpl());
  if (it == reg.by_first_param.end()) {
    for (const auto& [name, p] : spec.params)
      if (reg.params.count(p.unsafeGetTensorImpl()))
        throw Error(ds::str("unit ", spec.name, ": its parameter ", name, " was sharded by ds::Init in another unit; "
                            "call ds::zero::unit_built on the modules that ds::find_units makes units of"));
    return nullptr;
  }
  std::unique_ptr<FlatUnit> unit = std::move(it->second);
  reg.by_first_param.erase(it);
  const auto& tensors = unit->tensors();
  bool same = tensors.size() == spec.params.size();
  for (size_t i = 0; same && i < tensors.size(); ++i)
    same = tensors[i].unsafeGetTensorImpl() == spec.params[i].second.unsafeGetTensorImpl();
  if (!same)
    throw Error(ds::str("unit ", spec.name, " has ", spec.params.size(), " parameters but ds::Init sharded its module ",
                        unit->name(), " with ", tensors.size(), "; call ds::zero::unit_built on the modules that "
                        "ds::find_units makes units of"));
  for (const at::Tensor& p : tensors) reg.params.erase(p.unsafeGetTensorImpl());
  std::vector<std::string> names;
  for (const auto& [name, p] : spec.params) names.push_back(name);
  unit->rename(spec.name, names);
  return unit;
}

}  // namespace ds
