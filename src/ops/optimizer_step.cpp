// The raw-pointer layer around the SIMD kernels: argument checks, per-step coefficients,
// target selection and the split into tiles over the thread pool. No LibTorch here.
#include <hwy/targets.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <mutex>
#include <utility>

#include "ds/common/error.h"
#include "ds/ops/optimizer_kernels.h"
#include "src/ops/kernel_registry.h"

namespace ds::ops {
namespace detail {
namespace {

struct Registry {
  std::mutex mutex;
  std::vector<std::pair<int64_t, const RangeKernel*>> tables;  // sorted: best (lowest bit) first
};
Registry& registry() {
  static Registry r;
  return r;
}

const RangeKernel* table_of(int64_t bit) {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  for (const auto& [b, table] : r.tables)
    if (b == bit) return table;
  return nullptr;
}

std::string target_name(int64_t bit) { return hwy::TargetName(bit); }

std::string names_of(const std::vector<SimdTarget>& targets) {
  std::string s;
  for (const auto& t : targets) s += (s.empty() ? "" : ", ") + t.name;
  return s;
}

}  // namespace

bool register_kernels(int64_t target_bit, const RangeKernel* table) {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  r.tables.emplace_back(target_bit, table);
  std::sort(r.tables.begin(), r.tables.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  return true;
}

std::vector<int64_t> compiled_simd_targets() {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  std::vector<int64_t> bits;
  for (const auto& [b, table] : r.tables) bits.push_back(b);
  return bits;
}

StepCoefficients make_coefficients(const OptimizerHyper& h) {
  StepCoefficients c;
  c.beta1 = static_cast<float>(h.beta1);
  c.one_minus_beta1 = static_cast<float>(1.0 - h.beta1);
  c.beta2 = static_cast<float>(h.beta2);
  c.one_minus_beta2 = static_cast<float>(1.0 - h.beta2);
  c.eps = static_cast<float>(h.eps);
  const double t = static_cast<double>(h.step);
  switch (h.kind) {
    case OptimizerKind::Adam:
    case OptimizerKind::AdamW: {
      // torch::optim::Adam: step_size = lr / (1 - beta1^t); denom = sqrt(v) / sqrt(1 - beta2^t) + eps.
      double step_size = h.lr;
      double inv_sqrt_bc2 = 1.0;
      if (h.bias_correction) {
        step_size = h.lr / (1.0 - std::pow(h.beta1, t));
        inv_sqrt_bc2 = 1.0 / std::sqrt(1.0 - std::pow(h.beta2, t));
      }
      c.neg_step_size = static_cast<float>(-step_size);
      c.inv_sqrt_bias_correction2 = static_cast<float>(inv_sqrt_bc2);
      if (h.kind == OptimizerKind::Adam) {
        c.l2_decay = static_cast<float>(h.weight_decay);
      } else {
        c.param_scale = static_cast<float>(1.0 - h.lr * h.weight_decay);
      }
      break;
    }
    case OptimizerKind::Adagrad:
      // torch::optim::Adagrad: clr = lr / (1 + (t - 1) * lr_decay).
      c.neg_step_size = static_cast<float>(-(h.lr / (1.0 + (t - 1.0) * h.lr_decay)));
      c.l2_decay = static_cast<float>(h.weight_decay);
      break;
    case OptimizerKind::Lion:
      c.neg_step_size = static_cast<float>(-h.lr);
      c.param_scale = static_cast<float>(1.0 - h.lr * h.weight_decay);
      break;
  }
  return c;
}

}  // namespace detail

const char* to_string(OptimizerKind kind) {
  switch (kind) {
    case OptimizerKind::Adam:
      return "Adam";
    case OptimizerKind::AdamW:
      return "AdamW";
    case OptimizerKind::Adagrad:
      return "Adagrad";
    case OptimizerKind::Lion:
      return "Lion";
  }
  return "?";
}

const char* to_string(ElemType type) {
  switch (type) {
    case ElemType::F32:
      return "float32";
    case ElemType::BF16:
      return "bfloat16";
    case ElemType::F16:
      return "float16";
  }
  return "?";
}

int state_count(OptimizerKind kind) {
  return (kind == OptimizerKind::Adam || kind == OptimizerKind::AdamW) ? 2 : 1;
}

std::vector<SimdTarget> available_simd_targets() {
  const int64_t supported = hwy::SupportedTargets();
  std::vector<SimdTarget> out;
  for (int64_t bit : detail::compiled_simd_targets())
    if (supported & bit) out.push_back({bit, detail::target_name(bit)});
  return out;
}

SimdTarget best_simd_target() {
  const int64_t bit = detail::dispatched_simd_target();
  return {bit, detail::target_name(bit)};
}

SimdTarget simd_target_by_name(const std::string& name) {
  auto upper = [](std::string s) {
    for (auto& ch : s) ch = static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
    return s;
  };
  const auto available = available_simd_targets();
  for (const auto& t : available)
    if (upper(t.name) == upper(name)) return t;
  throw Error(
      str("SIMD target '", name, "' is not available on this CPU; available: ", detail::names_of(available)));
}

namespace {

bool valid(ElemType t) { return t == ElemType::F32 || t == ElemType::BF16 || t == ElemType::F16; }
size_t bytes_of(ElemType t) { return t == ElemType::F32 ? 4 : 2; }

struct Range {
  const char* name;
  const void* ptr;
  size_t bytes;
};

bool overlap(const Range& a, const Range& b) {
  const auto a0 = reinterpret_cast<uintptr_t>(a.ptr), b0 = reinterpret_cast<uintptr_t>(b.ptr);
  return a0 < b0 + b.bytes && b0 < a0 + a.bytes;
}

void check_pointer(const char* name, const void* p, size_t align) {
  DS_CHECK(p != nullptr, "optimizer_step: ", name, " is null");
  DS_CHECK(reinterpret_cast<uintptr_t>(p) % align == 0, "optimizer_step: ", name, " at ", p,
           " is not aligned to its element size (", align, " bytes)");
}

void check_hyper(const OptimizerHyper& h) {
  const char* k = to_string(h.kind);
  DS_CHECK(h.kind == OptimizerKind::Adam || h.kind == OptimizerKind::AdamW ||
               h.kind == OptimizerKind::Adagrad || h.kind == OptimizerKind::Lion,
           "optimizer_step: unknown optimizer kind ", static_cast<int>(h.kind));
  DS_CHECK(std::isfinite(h.lr) && h.lr >= 0, k, ": lr must be finite and >= 0, got ", h.lr);
  DS_CHECK(std::isfinite(h.weight_decay) && h.weight_decay >= 0, k,
           ": weight_decay must be finite and >= 0, got ", h.weight_decay);
  DS_CHECK(h.step >= 1, k, ": step is 1-based and must be >= 1, got ", h.step);
  if (h.kind != OptimizerKind::Lion)
    DS_CHECK(std::isfinite(h.eps) && h.eps >= 0, k, ": eps must be finite and >= 0, got ", h.eps);
  if (h.kind == OptimizerKind::Adam || h.kind == OptimizerKind::AdamW) {
    DS_CHECK(h.beta1 >= 0 && h.beta1 < 1, k, ": beta1 must be in [0, 1), got ", h.beta1);
    DS_CHECK(h.beta2 >= 0 && h.beta2 < 1, k, ": beta2 must be in [0, 1), got ", h.beta2);
  } else if (h.kind == OptimizerKind::Lion) {
    DS_CHECK(h.beta1 >= 0 && h.beta1 <= 1, k, ": beta1 must be in [0, 1], got ", h.beta1);
    DS_CHECK(h.beta2 >= 0 && h.beta2 < 1, k, ": beta2 must be in [0, 1), got ", h.beta2);
  } else {
    DS_CHECK(std::isfinite(h.lr_decay) && h.lr_decay >= 0, k, ": lr_decay must be finite and >= 0, got ",
             h.lr_decay);
  }
}

}  // namespace

void check_optimizer_args(const OptimizerHyper& h, const FlatBuffers& b) {
  check_hyper(h);
  const char* k = to_string(h.kind);
  DS_CHECK(b.n >= 0, k, ": negative element count ", b.n);
  DS_CHECK(b.n <= (int64_t{1} << 60), k, ": element count ", b.n, " is implausibly large");
  DS_CHECK(valid(b.grad_type), k, ": unknown gradient element type ", static_cast<int>(b.grad_type));
  const bool two_states = state_count(h.kind) == 2;
  DS_CHECK(two_states || b.state1 == nullptr, k, " has one state buffer, but state1 was given");
  if (b.half_copy)
    DS_CHECK(b.half_type == ElemType::BF16 || b.half_type == ElemType::F16, k,
             ": the working copy must be bfloat16 or float16, got ", to_string(b.half_type));
  if (b.n == 0) return;  // nothing is read or written: empty tensors may have null data

  const size_t n = static_cast<size_t>(b.n);
  check_pointer("param", b.param, 4);
  check_pointer("grad", b.grad, bytes_of(b.grad_type));
  check_pointer(two_states ? "exp_avg (state0)" : "state0", b.state0, 4);
  if (two_states) check_pointer("exp_avg_sq (state1)", b.state1, 4);
  const size_t copy_bytes = b.half_as_f32 ? 4 : 2;
  if (b.half_copy) check_pointer("half_copy", b.half_copy, copy_bytes);

  std::vector<Range> ranges = {
      {"param", b.param, 4 * n}, {"grad", b.grad, bytes_of(b.grad_type) * n}, {"state0", b.state0, 4 * n}};
  if (b.state1) ranges.push_back({"state1", b.state1, 4 * n});
  if (b.half_copy) ranges.push_back({"half_copy", b.half_copy, copy_bytes * n});
  for (size_t i = 0; i < ranges.size(); ++i)
    for (size_t j = i + 1; j < ranges.size(); ++j)
      DS_CHECK(!overlap(ranges[i], ranges[j]), k, ": ", ranges[i].name, " [", ranges[i].ptr, ", +",
               ranges[i].bytes, " B) overlaps ", ranges[j].name, " [", ranges[j].ptr, ", +", ranges[j].bytes,
               " B)");
}

void optimizer_step(const OptimizerHyper& hyper, const FlatBuffers& b, ThreadPool* pool,
                    int64_t simd_target) {
  check_optimizer_args(hyper, b);
  const int64_t bit = simd_target == 0 ? detail::dispatched_simd_target() : simd_target;
  const detail::RangeKernel* table = detail::table_of(bit);
  DS_CHECK(table != nullptr, "optimizer_step: no kernels were compiled for SIMD target bit ", bit,
           "; available: ", detail::names_of(available_simd_targets()));
  DS_CHECK((hwy::SupportedTargets() & bit) != 0, "optimizer_step: SIMD target ", detail::target_name(bit),
           " is not supported by this CPU; available: ", detail::names_of(available_simd_targets()));
  if (b.n == 0) return;

  using detail::HalfOut;
  const bool bf16 = b.half_type == ElemType::BF16;
  const HalfOut half = b.half_copy == nullptr ? HalfOut::None
                       : b.half_as_f32        ? (bf16 ? HalfOut::BF16AsF32 : HalfOut::F16AsF32)
                                              : (bf16 ? HalfOut::BF16 : HalfOut::F16);
  const detail::RangeKernel kernel = table[detail::table_index(hyper.kind, b.grad_type, half)];
  const detail::StepCoefficients coef = detail::make_coefficients(hyper);
  const int64_t tiles = (b.n + kTileElements - 1) / kTileElements;
  if (pool == nullptr || pool->threads() == 1 || tiles == 1) {
    kernel(coef, b, 0, b.n);
    return;
  }
  pool->run(tiles, [&](int64_t tile, int) {
    const int64_t begin = tile * kTileElements;
    kernel(coef, b, begin, std::min(b.n, begin + kTileElements));
  });
}

}  // namespace ds::ops
