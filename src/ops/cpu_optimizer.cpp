// Tensors on top of the raw kernels: every tensor is checked (device, dtype, layout,
// contiguity, size) and then handed over as a pointer. Nothing is copied.
#include "ds/ops/cpu_optimizer.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cmath>

#include "ds/common/error.h"

namespace ds::ops {
namespace {

// PyTorch's Python names (float32, bfloat16, ...), which users know better than c10's.
std::string dtype_name(at::ScalarType t) {
  switch (t) {
    case at::kFloat:
      return "float32";
    case at::kDouble:
      return "float64";
    case at::kHalf:
      return "float16";
    case at::kBFloat16:
      return "bfloat16";
    case at::kInt:
      return "int32";
    case at::kLong:
      return "int64";
    default:
      return c10::toString(t);
  }
}

std::string describe(const at::Tensor& t) {
  return ds::str(dtype_name(t.scalar_type()), " ", t.sizes(), " strides ", t.strides(), " on ", t.device());
}

// Checks one tensor the kernel will read or write as a flat buffer of n elements.
void check_tensor(const char* what, const at::Tensor& t, int64_t n,
                  std::initializer_list<at::ScalarType> dtypes, const char* kind) {
  DS_CHECK(t.defined(), kind, ": ", what, " is an undefined tensor");
  DS_CHECK(t.layout() == at::kStrided, kind, ": ", what, " must be a dense (strided) tensor, got ",
           describe(t));
  DS_CHECK(t.device().is_cpu(), kind, ": ", what, " must be on the CPU, got ", describe(t));
  bool dtype_ok = false;
  std::string expected;
  for (auto d : dtypes) {
    dtype_ok = dtype_ok || t.scalar_type() == d;
    expected += (expected.empty() ? "" : " or ") + dtype_name(d);
  }
  DS_CHECK(dtype_ok, kind, ": ", what, " must be ", expected, ", got ", describe(t));
  DS_CHECK(t.is_contiguous(), kind, ": ", what, " is not contiguous (", describe(t),
           "); the optimizer updates memory in place and never copies: pass a contiguous tensor");
  DS_CHECK(t.numel() == n, kind, ": ", what, " has ", t.numel(), " elements (", describe(t),
           ") but param has ", n);
}

ElemType elem_type_of(at::ScalarType t) {
  switch (t) {
    case at::kFloat:
      return ElemType::F32;
    case at::kBFloat16:
      return ElemType::BF16;
    case at::kHalf:
      return ElemType::F16;
    default:
      throw Error(ds::str("no optimizer element type for ", dtype_name(t)));
  }
}

OptimizerHyper hyper_of(const CpuOptimizerOptions& o, int64_t step, double lr) {
  OptimizerHyper h;
  h.kind = o.kind;
  h.lr = lr;
  h.beta1 = o.beta1;
  h.beta2 = o.beta2;
  h.eps = o.eps;
  h.weight_decay = o.weight_decay;
  h.bias_correction = o.bias_correction;
  h.lr_decay = o.lr_decay;
  h.step = step;
  return h;
}

}  // namespace

CpuOptimizer::CpuOptimizer(CpuOptimizerOptions o) : options_(std::move(o)) {
  const char* k = to_string(options_.kind);
  check_optimizer_args(hyper_of(options_, 1, options_.lr), FlatBuffers{});  // hyper-parameters only
  DS_CHECK(std::isfinite(options_.initial_accumulator_value) && options_.initial_accumulator_value >= 0, k,
           ": initial_accumulator_value must be finite and >= 0, got ", options_.initial_accumulator_value);
  DS_CHECK(options_.threads >= 0, k, ": threads must be >= 0 (0 = at::get_num_threads()), got ",
           options_.threads);
  const int threads = options_.threads == 0 ? at::get_num_threads() : options_.threads;
  target_ = options_.simd_target.empty() ? best_simd_target() : simd_target_by_name(options_.simd_target);
  pool_ = std::make_unique<ThreadPool>(threads);
}

CpuOptimizer::~CpuOptimizer() = default;
CpuOptimizer::CpuOptimizer(CpuOptimizer&&) noexcept = default;
CpuOptimizer& CpuOptimizer::operator=(CpuOptimizer&&) noexcept = default;

int CpuOptimizer::threads() const { return pool_ ? pool_->threads() : 0; }  // 0: moved from

void CpuOptimizer::set_beta1(double beta1) {
  CpuOptimizerOptions o = options_;
  o.beta1 = beta1;
  check_optimizer_args(hyper_of(o, 1, o.lr), FlatBuffers{});  // same checks as construction
  options_.beta1 = beta1;
}

std::vector<at::Tensor> CpuOptimizer::make_state(int64_t n) const {
  DS_CHECK(n >= 0, to_string(options_.kind), ": make_state needs n >= 0, got ", n);
  const auto f32 = at::TensorOptions().dtype(at::kFloat);
  switch (options_.kind) {
    case OptimizerKind::Adam:
    case OptimizerKind::AdamW:
      return {at::zeros({n}, f32), at::zeros({n}, f32)};
    case OptimizerKind::Adagrad:
      return {at::full({n}, options_.initial_accumulator_value, f32)};
    case OptimizerKind::Lion:
      return {at::zeros({n}, f32)};
  }
  throw Error("make_state: unknown optimizer kind");
}

void CpuOptimizer::step(at::Tensor& param, const at::Tensor& grad, std::vector<at::Tensor>& state,
                        int64_t step) {
  this->step(param, grad, state, step, options_.lr, nullptr);
}

void CpuOptimizer::step(at::Tensor& param, const at::Tensor& grad, std::vector<at::Tensor>& state,
                        int64_t step, double lr, at::Tensor* half_copy, at::ScalarType copy_precision) {
  const char* k = to_string(options_.kind);
  DS_CHECK(param.defined(), k, ": param is an undefined tensor");
  const int64_t n = param.numel();
  check_tensor("param", param, n, {at::kFloat}, k);
  check_tensor("grad", grad, n, {at::kFloat, at::kBFloat16, at::kHalf}, k);
  const int expected_states = state_count(options_.kind);
  DS_CHECK(static_cast<int>(state.size()) == expected_states, k, " needs ", expected_states,
           " state tensor(s) (see make_state), got ", state.size());
  for (size_t i = 0; i < state.size(); ++i) {
    const std::string what = ds::str("state[", i, "]");
    check_tensor(what.c_str(), state[i], n, {at::kFloat}, k);
  }
  if (half_copy) {
    check_tensor("half_copy", *half_copy, n, {at::kBFloat16, at::kHalf, at::kFloat}, k);
    const bool as_f32 = half_copy->scalar_type() == at::kFloat;
    DS_CHECK(!as_f32 || copy_precision == at::kBFloat16 || copy_precision == at::kHalf, k,
             ": an fp32 working copy needs the precision to round to (bf16 or fp16), got ", copy_precision);
    DS_CHECK(as_f32 || copy_precision == at::kFloat || copy_precision == half_copy->scalar_type(), k,
             ": a ", half_copy->scalar_type(), " working copy cannot hold ", copy_precision, " values");
  }

  FlatBuffers b;
  b.n = n;
  b.param = param.data_ptr<float>();
  b.grad = grad.data_ptr();
  b.grad_type = elem_type_of(grad.scalar_type());
  b.state0 = state[0].data_ptr<float>();
  b.state1 = expected_states == 2 ? state[1].data_ptr<float>() : nullptr;
  if (half_copy) {
    b.half_copy = half_copy->data_ptr();
    b.half_as_f32 = half_copy->scalar_type() == at::kFloat;
    b.half_type = elem_type_of(b.half_as_f32 ? copy_precision : half_copy->scalar_type());
  }
  optimizer_step(hyper_of(options_, step, lr), b, pool_.get(), target_.bit);
}

}  // namespace ds::ops
