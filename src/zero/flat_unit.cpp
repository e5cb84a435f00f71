#include "ds/zero/flat_unit.h"

#include <ATen/ATen.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/container/moduledict.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/container/sequential.h>

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/variable.h>
#include <torch/library.h>

#include <mutex>
#include <unordered_map>
#include <unordered_set>

#include "ds/comm/communicator.h"
#include "ds/common/error.h"

namespace ds::zero {

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
  return dynamic_cast<const torch::nn::ModuleListImpl*>(&m) || dynamic_cast<const torch::nn::SequentialImpl*>(&m) ||
         dynamic_cast<const torch::nn::ModuleDictImpl*>(&m);
}

// Released stage-3 parameters carry DispatchKey::Fake (torchdistx's key, unused by LibTorch
// itself): it sits below autograd, so autograd's own bookkeeping (set_data, grad, requires_grad)
// still works on them, and above the CPU kernels, so any operation that would read the values
// lands in released_read() instead of computing on an empty tensor. The error names the
// parameter: LibTorch gives a tensor no slot for our metadata, so the names of released
// parameters are kept here, by TensorImpl, from shard() until the unit is destroyed.
struct ReleasedNames {
  std::mutex mu;
  std::unordered_map<const c10::TensorImpl*, std::string> names;
};

ReleasedNames& released_names() {
  static ReleasedNames r;
  return r;
}

void released_read(const c10::OperatorHandle& op, torch::jit::Stack* stack) {
  std::string name = "a parameter";
  for (const c10::IValue& v : *stack) {
    if (!v.isTensor() || !v.toTensor().key_set().has(c10::DispatchKey::Fake)) continue;
    ReleasedNames& r = released_names();
    std::lock_guard<std::mutex> lock(r.mu);
    auto it = r.names.find(v.toTensor().unsafeGetTensorImpl());
    if (it != r.names.end()) name = it->second;
    break;
  }
  throw Error(ds::str(name, " is sharded by ZeRO stage 3 and not gathered here (", op.schema().name(),
                      " read it): run its module through ds::zero::run_unit, or read it inside "
                      "engine.gathered_parameters({...})"));
}

TORCH_LIBRARY_IMPL(_, Fake, m) { m.fallback(torch::CppFunction::makeFromBoxedFunction<&released_read>()); }

// An empty float tensor whose reads go to released_read().
at::Tensor released_placeholder(at::ScalarType dtype) {
  at::Tensor base = at::empty({0}, at::TensorOptions().dtype(dtype));
  auto impl = c10::make_intrusive<c10::TensorImpl>(c10::Storage(base.storage()),
                                                   base.key_set().add(c10::DispatchKey::Fake), base.dtype());
  impl->set_sizes_contiguous({0});
  return at::Tensor(std::move(impl));
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

FlatUnit::FlatUnit(std::string name, const NamedParams& params, FlatUnitOptions options)
    : name_(std::move(name)), options_(options) {
  if (params.empty()) throw Error(ds::str("unit '", name_, "' has no parameters"));
  for (const auto& [pname, p] : params) {
    if (!at::isFloatingType(p.scalar_type()))
      throw Error(ds::str("parameter ", pname, " is ", p.scalar_type(), "; only floating-point parameters can be trained"));
    if (!p.device().is_cpu()) throw Error(ds::str("parameter ", pname, " is on ", p.device(), "; this build trains on CPU"));
    slots_.push_back({pname, numel_, p.numel(), p.sizes().vec()});
    numel_ += p.numel();
  }
  padded_numel_ = round_up(numel_, options_.pad_to);
  params_ = at::zeros({padded_numel_}, at::TensorOptions().dtype(options_.dtype));
  if (options_.persistent_grads) grads_ = at::zeros_like(params_);
  for (size_t i = 0; i < params.size(); ++i) {
    const ParamSlot& s = slots_[i];
    at::Tensor p = params[i].second;
    at::Tensor view = params_.slice(0, s.offset, s.offset + s.numel).view(s.shape);
    view.copy_(p.detach());
    p.set_data(view);
    if (options_.persistent_grads) p.mutable_grad() = grads_.slice(0, s.offset, s.offset + s.numel).view(s.shape);
    else p.mutable_grad() = at::Tensor();
    tensors_.push_back(p);
  }
}

void FlatUnit::zero_grad() {
  if (grads_.defined()) grads_.zero_();
  else
    for (auto& p : tensors_) p.mutable_grad() = at::Tensor();
}

at::Tensor FlatUnit::pack_grads(at::ScalarType dtype) {
  if (grads_.defined()) return grads_.to(dtype);
  at::Tensor flat = at::zeros({padded_numel()}, at::TensorOptions().dtype(dtype));
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
    const void* want = static_cast<const char*>(grads_.data_ptr()) + s.offset * int64_t(grads_.element_size());
    if (!g.defined()) {
      g = grads_.slice(0, s.offset, s.offset + s.numel).view(s.shape);  // re-attach after zero_grad()
    } else if (g.data_ptr() != want) {
      throw Error(ds::str("the gradient of ", s.name, " was replaced by another tensor; let the engine manage "
                          "gradients (do not assign .grad() or call the optimizer yourself)"));
    }
  }
}

void FlatUnit::shard(int world, int rank) {
  DS_CHECK(!sharded() && gathered() && !grads_.defined(), "unit ", name_, " cannot be sharded twice or with persistent grads");
  comm::Chunk own = comm::chunk_of(padded_numel_, world, rank);
  shard_ = params_.slice(0, own.offset, own.offset + own.length).to(options_.shard_dtype, false, /*copy=*/true);
  sharded_ = true;
  shard_offset_ = own.offset;
  shard_numel_ = own.length;
  for (const at::Tensor& p : tensors_) accumulators_.push_back(torch::autograd::impl::grad_accumulator(p));
  {
    ReleasedNames& r = released_names();
    std::lock_guard<std::mutex> lock(r.mu);
    for (size_t i = 0; i < tensors_.size(); ++i) r.names[tensors_[i].unsafeGetTensorImpl()] = slots_[i].name;
  }
  release();
}

void FlatUnit::attach(const at::Tensor& full) {
  DS_CHECK(full.numel() == padded_numel_ && full.scalar_type() == options_.dtype && full.is_contiguous(),
           "unit ", name_, ": a gathered buffer must be contiguous ", options_.dtype, " of ", padded_numel_, " elements");
  params_ = full;
  for (size_t i = 0; i < tensors_.size(); ++i) {
    const ParamSlot& s = slots_[i];
    tensors_[i].set_data(params_.slice(0, s.offset, s.offset + s.numel).view(s.shape));
  }
}

void FlatUnit::release() {
  DS_CHECK(sharded(), "unit ", name_, " is not sharded; it cannot release its parameters");
  at::Tensor placeholder = released_placeholder(options_.dtype);
  for (auto& p : tensors_) p.set_data(placeholder);
  params_ = at::Tensor();
}

void FlatUnit::rename(std::string name, const std::vector<std::string>& slot_names) {
  DS_CHECK(slot_names.size() == slots_.size(), "unit ", name_, ": ", slot_names.size(), " names for ", slots_.size(), " slots");
  name_ = std::move(name);
  for (size_t i = 0; i < slots_.size(); ++i) slots_[i].name = slot_names[i];
  if (!sharded()) return;
  ReleasedNames& r = released_names();
  std::lock_guard<std::mutex> lock(r.mu);
  for (size_t i = 0; i < tensors_.size(); ++i) r.names[tensors_[i].unsafeGetTensorImpl()] = slots_[i].name;
}

FlatUnit::~FlatUnit() {
  if (!sharded()) return;
  ReleasedNames& r = released_names();
  std::lock_guard<std::mutex> lock(r.mu);
  for (auto& p : tensors_) r.names.erase(p.unsafeGetTensorImpl());
}

}  // namespace ds::zero
