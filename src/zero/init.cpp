#include "ds/zero/init.h"

#include <ATen/ATen.h>
#include <torch/nn/module.h>

#include <unordered_set>

#include "ds/comm/agreement.h"
#include "ds/common/error.h"
#include "ds/zero/precision.h"

namespace ds::zero {

namespace {

InitOptions options_from(const Config& config) {
  const PrecisionPolicy p = PrecisionPolicy::from_config(config);
  return {p.working, p.param};
}

}  // namespace

Init::Init(std::shared_ptr<comm::Communicator> data_group, const Config& config)
    : Init(std::move(data_group), config, options_from(config)) {}

Init::Init(std::shared_ptr<comm::Communicator> data_group, const Config& config, InitOptions options)
    : comm_(std::move(data_group)), options_(options), enabled_(config.zero_optimization.stage == 3) {
  if (!enabled_) return;
  previous_ = nn::set_build_hook(this);
  open_ = true;
}

Init::~Init() { close(); }

void Init::close() {
  if (!open_) return;
  nn::set_build_hook(previous_);
  open_ = false;
}

ShardedUnits Init::take_units() {
  close();
  return std::move(units_);
}

void Init::unit_built(torch::nn::Module& module) {
  std::unordered_set<const void*> taken;
  for (const auto& u : units_)
    for (const at::Tensor& p : u->tensors()) taken.insert(p.unsafeGetTensorImpl());
  NamedParams params;
  for (const auto& item : module.named_parameters(/*recurse=*/true)) {
    const at::Tensor& p = item.value();
    if (p.requires_grad() && !taken.count(p.unsafeGetTensorImpl())) params.emplace_back(item.key(), p);
  }
  // Before the broadcast: ranks building another model would send other sizes.
  std::string fingerprint;
  for (const auto& [name, p] : params) fingerprint += ds::str(name, " ", p.sizes(), " ", p.scalar_type(), "\n");
  comm::check_ranks_agree(*comm_, ds::str("the module ", module.name(), " built under ds::zero::Init"), fingerprint);
  if (params.empty()) return;
  const int world = comm_->size();
  FlatUnitOptions o;
  o.pad_to = kUnitPadding * world;
  o.dtype = options_.dtype;
  o.shard_dtype = options_.shard_dtype;
  o.persistent_grads = false;
  auto unit = std::make_unique<FlatUnit>(module.name(), params, o);
  at::Tensor full = unit->params();
  comm_->broadcast(full, 0).wait();  // every rank starts from the group's first rank's weights
  // The weights hold the param dtype's values (bf16/fp16 training) before they are sharded.
  if (full.scalar_type() != options_.shard_dtype) full.copy_(full.to(options_.shard_dtype));
  unit->shard(world, comm_->rank());
  units_.push_back(std::move(unit));
}

std::unique_ptr<FlatUnit> take_matching_unit(ShardedUnits& sharded, const UnitSpec& spec) {
  if (spec.params.empty()) return nullptr;
  for (auto it = sharded.begin(); it != sharded.end(); ++it) {
    const auto& tensors = (*it)->tensors();
    bool holds_first = false, holds_any = false;
    for (const auto& [name, p] : spec.params)
      for (const at::Tensor& t : tensors)
        if (t.unsafeGetTensorImpl() == p.unsafeGetTensorImpl()) {
          holds_any = true;
          holds_first |= &p == &spec.params.front().second;
        }
    if (!holds_any) continue;
    bool same = holds_first && tensors.size() == spec.params.size();
    for (size_t i = 0; same && i < tensors.size(); ++i)
      same = tensors[i].unsafeGetTensorImpl() == spec.params[i].second.unsafeGetTensorImpl();
    if (!same)
      throw Error(ds::str("unit ", spec.name, " has ", spec.params.size(), " parameters but ds::zero::Init sharded ",
                          "its module ", (*it)->name(), " with ", tensors.size(), "; call ds::nn::unit_built on the ",
                          "modules that ds::zero::find_units makes units of"));
    std::unique_ptr<FlatUnit> unit = std::move(*it);
    sharded.erase(it);
    std::vector<std::string> names;
    for (const auto& [name, p] : spec.params) names.push_back(name);
    unit->rename(spec.name, names);
    return unit;
  }
  return nullptr;
}

}  // namespace ds::zero
