#include "ds/runtime/flat_unit.h"

#include <ATen/ATen.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/container/sequential.h>

#include <unordered_set>

#include "ds/common/error.h"

namespace ds {

int64_t round_up(int64_t n, int64_t multiple) { return multiple <= 1 ? n : (n + multiple - 1) / multiple * multiple; }

namespace {

// `prefix`: what makes the module's parameter names the root's state-dict names ("" for the
// root itself, so its unit's slots are "wte.weight", not "root.wte.weight").
void add_unit(std::vector<UnitSpec>& out, std::unordered_set<const void*>& seen, const std::string& name,
              const std::string& prefix, torch::nn::Module& m, bool recurse) {
  UnitSpec u{name, {}};
  for (const auto& item : m.named_parameters(recurse)) {
    const at::Tensor& p = item.value();
    if (!p.requires_grad() || !seen.insert(p.unsafeGetTensorImpl()).second) continue;
    u.params.emplace_back(prefix + item.key(), p);
  }
  if (!u.params.empty()) out.push_back(std::move(u));
}

bool is_container(const torch::nn::Module& m) {
  return dynamic_cast<const torch::nn::ModuleListImpl*>(&m) || dynamic_cast<const torch::nn::SequentialImpl*>(&m);
}

}  // namespace

std::vector<UnitSpec> find_units(torch::nn::Module& model) {
  std::vector<UnitSpec> out;
  std::unordered_set<const void*> seen;
  add_unit(out, seen, "root", "", model, /*recurse=*/false);
  for (const auto& child : model.named_children()) {
    if (is_container(*child.value())) {
      for (const auto& element : child.value()->named_children()) {
        std::string name = child.key() + "." + element.key();
        add_unit(out, seen, name, name + ".", *element.value(), true);
      }
      // Parameters on the container itself.
      add_unit(out, seen, child.key(), child.key() + ".", *child.value(), false);
    } else {
      add_unit(out, seen, child.key(), child.key() + ".", *child.value(), true);
    }
  }
  return out;
}

FlatUnit::FlatUnit(std::string name, const NamedParams& params, int64_t pad_to, bool persistent_grads)
    : name_(std::move(name)) {
  if (params.empty()) throw Error(ds::str("unit '", name_, "' has no parameters"));
  for (const auto& [pname, p] : params) {
    if (p.scalar_type() != at::kFloat)
      throw Error(ds::str("parameter ", pname, " is ", p.scalar_type(),
                          "; build the model in float32 (the engine keeps bf16/fp16 copies itself)"));
    if (!p.device().is_cpu()) throw Error(ds::str("parameter ", pname, " is on ", p.device(), "; this build trains on CPU"));
    slots_.push_back({pname, numel_, p.numel(), p.sizes().vec()});
    numel_ += p.numel();
  }
  params_ = at::zeros({round_up(numel_, pad_to)}, at::kFloat);
  if (persistent_grads) grads_ = at::zeros_like(params_);
  for (size_t i = 0; i < params.size(); ++i) {
    const ParamSlot& s = slots_[i];
    at::Tensor p = params[i].second;
    at::Tensor view = params_.slice(0, s.offset, s.offset + s.numel).view(s.shape);
    view.copy_(p.detach());
    p.set_data(view);
    if (persistent_grads) p.mutable_grad() = grads_.slice(0, s.offset, s.offset + s.numel).view(s.shape);
    else p.mutable_grad() = at::Tensor();
    tensors_.push_back(p);
  }
}

ckpt::UnitInfo to_unit_info(const FlatUnit& unit) {
  ckpt::UnitInfo info{unit.name(), unit.numel(), unit.padded_numel(), {}};
  for (const ParamSlot& s : unit.slots()) info.slots.push_back({s.name, s.offset, s.numel, s.shape});
  return info;
}

void FlatUnit::zero_grad() {
  if (grads_.defined()) grads_.zero_();
  else
    for (auto& p : tensors_) p.mutable_grad() = at::Tensor();
}

at::Tensor FlatUnit::pack_grads(at::ScalarType dtype) {
  if (grads_.defined()) return grads_.to(dtype);
  at::Tensor flat = at::zeros({padded_numel()}, params_.options().dtype(dtype));
  for (size_t i = 0; i < tensors_.size(); ++i) {
    at::Tensor& g = tensors_[i].mutable_grad();
    if (g.defined()) flat.slice(0, slots_[i].offset, slots_[i].offset + slots_[i].numel).copy_(g.reshape(-1));
    g = at::Tensor();
  }
  return flat;
}

void FlatUnit::check_grad_views() {
  if (!grads_.defined()) return;  // transient grads: nothing to check
  for (size_t i = 0; i < tensors_.size(); ++i) {
    const ParamSlot& s = slots_[i];
    at::Tensor& g = tensors_[i].mutable_grad();
    const void* want = static_cast<const char*>(grads_.data_ptr()) + s.offset * sizeof(float);
    if (!g.defined()) {
      g = grads_.slice(0, s.offset, s.offset + s.numel).view(s.shape);  // re-attach after zero_grad()
    } else if (g.data_ptr() != want) {
      throw Error(ds::str("the gradient of ", s.name, " was replaced by another tensor; let the engine manage "
                          "gradients (do not assign .grad() or call the optimizer yourself)"));
    }
  }
}

}  // namespace ds
