// The price of one ATen op from its input shapes (see flops_profiler.h). The profiler counts
// the outermost priced op and skips what it calls, so a composite op is priced either here or
// through its parts, never twice.
#include <ATen/ATen.h>

#include <unordered_map>

#include "ds/profiling/flops_profiler.h"

namespace ds::profiling {

namespace {

const at::Tensor* tensor_at(c10::ArrayRef<const c10::IValue> in, size_t i) {
  return i < in.size() && in[i].isTensor() ? &in[i].toTensor() : nullptr;
}

double prod(at::IntArrayRef s) {
  double n = 1;
  for (int64_t d : s) n *= double(d);
  return n;
}

// The elements of the broadcast of every tensor input (an elementwise op's output); inputs
// that do not broadcast (a loss's input and targets) count the largest.
double broadcast_numel(c10::ArrayRef<const c10::IValue> in) {
  std::vector<int64_t> shape;  // right-aligned
  double largest = 0;
  bool broadcasts = true;
  for (const auto& v : in) {
    if (!v.isTensor() || !v.toTensor().defined()) continue;
    const at::Tensor& t = v.toTensor();
    largest = std::max(largest, double(t.numel()));
    const auto sizes = t.sizes();
    if (sizes.size() > shape.size()) shape.insert(shape.begin(), sizes.size() - shape.size(), 1);
    for (size_t i = 0; i < sizes.size(); ++i) {
      int64_t& have = shape[shape.size() - sizes.size() + i];
      const int64_t want = sizes[i];
      if (have == 1)
        have = want;
      else if (want != 1 && want != have)
        broadcasts = false;
    }
  }
  return broadcasts ? prod(shape) : largest;
}

double first_numel(c10::ArrayRef<const c10::IValue> in) {
  for (const auto& v : in)
    if (v.isTensor() && v.toTensor().defined()) return double(v.toTensor().numel());
  return 0;
}

OpCost matmul_cost(double macs) { return {2 * macs, macs, true}; }

// a @ b with numpy broadcasting of the batch dimensions.
OpCost matmul_of(const at::Tensor& a, const at::Tensor& b) {
  if (a.dim() == 0 || b.dim() == 0) return matmul_cost(double(std::max(a.numel(), b.numel())));
  const int64_t k = a.size(-1);
  const int64_t m = a.dim() >= 2 ? a.size(-2) : 1;
  const int64_t n = b.dim() >= 2 ? b.size(-1) : 1;
  const auto batch_a = a.dim() > 2 ? a.sizes().slice(0, size_t(a.dim() - 2)) : at::IntArrayRef{};
  const auto batch_b = b.dim() > 2 ? b.sizes().slice(0, size_t(b.dim() - 2)) : at::IntArrayRef{};
  const double batch = prod(at::infer_size(batch_a, batch_b));
  return matmul_cost(batch * double(m) * double(k) * double(n));
}

// Convolution: every output element is a dot product over (input channels / groups) x kernel.
OpCost convolution(c10::ArrayRef<const c10::IValue> in, bool transposed) {
  const at::Tensor* x = tensor_at(in, 0);
  const at::Tensor* w = tensor_at(in, 1);
  if (!x || !w || w->dim() < 3) return {};
  const double kernel = prod(w->sizes().slice(2));
  if (transposed) {  // weight [in, out / groups, k...]: every input element feeds out/groups x kernel
    return matmul_cost(double(x->numel()) * double(w->size(1)) * kernel);
  }
  // weight [out, in / groups, k...]: output positions from the input's spatial size, stride,
  // padding and dilation (conv1d/2d/3d and convolution share that argument order).
  const int64_t spatial = w->dim() - 2;
  auto ints = [&](size_t i) {
    std::vector<int64_t> v(size_t(spatial), i == 3 ? 0 : 1);
    if (i < in.size() && in[i].isIntList()) {
      auto l = in[i].toIntVector();
      for (int64_t d = 0; d < spatial; ++d) v[size_t(d)] = l.size() == 1 ? l[0] : l[size_t(d)];
    }
    return v;
  };
  const auto stride = ints(3), padding = ints(4), dilation = ints(5);
  if (x->dim() < spatial + 1) return {};
  double positions = 1;
  for (int64_t d = 0; d < spatial; ++d) {
    const int64_t size = x->size(x->dim() - spatial + d), k = w->size(2 + d);
    const int64_t out = (size + 2 * padding[size_t(d)] - dilation[size_t(d)] * (k - 1) - 1) / stride[size_t(d)] + 1;
    positions *= double(std::max<int64_t>(out, 0));
  }
  const double batch = x->dim() == spatial + 2 ? double(x->size(0)) : 1.0;
  return matmul_cost(batch * positions * double(w->size(0)) * double(w->size(1)) * kernel);
}

enum class Kind { kMm, kBmm, kAddmm, kBaddbmm, kMatmul, kLinear, kConv, kConvTransposed, kConvolution,
                  kElementwise, kReduction, kNorm, kFree, kCounted };

const std::unordered_map<std::string, Kind>& kinds() {
  static const std::unordered_map<std::string, Kind> table = [] {
    std::unordered_map<std::string, Kind> t = {
        {"aten::mm", Kind::kMm},           {"aten::bmm", Kind::kBmm},         {"aten::addmm", Kind::kAddmm},
        {"aten::addmm_", Kind::kAddmm},    {"aten::baddbmm", Kind::kBaddbmm}, {"aten::baddbmm_", Kind::kBaddbmm},
        {"aten::matmul", Kind::kMatmul},   {"aten::linear", Kind::kLinear},   {"aten::mv", Kind::kMatmul},
        {"aten::dot", Kind::kMatmul},      {"aten::conv1d", Kind::kConv},     {"aten::conv2d", Kind::kConv},
        {"aten::conv3d", Kind::kConv},     {"aten::convolution", Kind::kConvolution},
        {"aten::_convolution", Kind::kConvolution},
        {"aten::conv_transpose1d", Kind::kConvTransposed},
        {"aten::conv_transpose2d", Kind::kConvTransposed},
        {"aten::conv_transpose3d", Kind::kConvTransposed},
        {"aten::layer_norm", Kind::kNorm}, {"aten::native_layer_norm", Kind::kNorm},
        {"aten::group_norm", Kind::kNorm}, {"aten::native_group_norm", Kind::kNorm},
        {"aten::batch_norm", Kind::kNorm}, {"aten::native_batch_norm", Kind::kNorm},
        {"aten::native_layer_norm_backward", Kind::kNorm},
        // no arithmetic: lookups, copies, masks, random numbers
        {"aten::embedding", Kind::kFree},  {"aten::embedding_dense_backward", Kind::kFree},
        {"aten::embedding_backward", Kind::kFree},  {"aten::index_select", Kind::kFree},
        {"aten::masked_fill", Kind::kFree}, {"aten::masked_fill_", Kind::kFree},
        {"aten::dropout", Kind::kElementwise}, {"aten::native_dropout", Kind::kElementwise},
        {"aten::native_dropout_backward", Kind::kElementwise},
        // our fused ops: their multiply-adds come as the last input (ds/sparse/attention.h)
        {"ds::block_sparse_attention", Kind::kCounted},
        {"ds::block_sparse_attention_backward", Kind::kCounted},
    };
    for (const char* op : {"add", "sub", "mul", "div", "rsub", "neg", "exp", "log", "tanh", "sigmoid", "relu", "gelu",
                           "silu", "sqrt", "rsqrt", "pow", "reciprocal", "softmax", "_softmax", "log_softmax",
                           "_log_softmax", "threshold", "clamp", "abs", "erf", "addcmul", "addcdiv", "lerp",
                           "where", "maximum", "minimum"})
      for (const std::string suffix : {"", "_"}) t.emplace(std::string("aten::") + op + suffix, Kind::kElementwise);
    for (const char* op : {"gelu_backward", "threshold_backward", "silu_backward", "tanh_backward", "sigmoid_backward",
                           "_softmax_backward_data", "_log_softmax_backward_data", "nll_loss", "nll_loss_forward",
                           "nll_loss_backward", "nll_loss2d_forward", "mse_loss", "mse_loss_backward"})
      t.emplace(std::string("aten::") + op, Kind::kElementwise);
    for (const char* op : {"sum", "mean", "norm", "linalg_vector_norm", "var", "std", "amax", "max", "logsumexp"})
      t.emplace(std::string("aten::") + op, Kind::kReduction);
    return t;
  }();
  return table;
}

}  // namespace

OpCost op_cost(const std::string& name, c10::ArrayRef<const c10::IValue> in) {
  const auto& table = kinds();
  auto it = table.find(name);
  if (it == table.end()) return {};
  const at::Tensor* t0 = tensor_at(in, 0);
  const at::Tensor* t1 = tensor_at(in, 1);
  const at::Tensor* t2 = tensor_at(in, 2);
  switch (it->second) {
    case Kind::kMm:
    case Kind::kBmm:
    case Kind::kMatmul:
      return t0 && t1 ? matmul_of(*t0, *t1) : OpCost{0, 0, true};
    case Kind::kAddmm:
    case Kind::kBaddbmm:  // (self, a, b): the product, the scaled add is negligible
      return t1 && t2 ? matmul_of(*t1, *t2) : OpCost{0, 0, true};
    case Kind::kLinear: {  // (x, weight[out, in], bias)
      if (!t0 || !t1 || t1->dim() != 2) return {0, 0, true};
      return matmul_cost(double(t0->numel()) / double(std::max<int64_t>(t1->size(1), 1)) * double(t1->numel()));
    }
    case Kind::kConv:
      return convolution(in, false);
    case Kind::kConvTransposed:
      return convolution(in, true);
    case Kind::kConvolution: {  // (input, weight, bias, stride, padding, dilation, transposed, ...)
      const bool transposed = in.size() > 6 && in[6].isBool() && in[6].toBool();
      return convolution(in, transposed);
    }
    case Kind::kNorm:
      return {5 * first_numel(in), 0, true};
    case Kind::kElementwise:
      return {broadcast_numel(in), 0, true};
    case Kind::kReduction:
      return {first_numel(in), 0, true};
    case Kind::kFree:
      return {0, 0, true};
    case Kind::kCounted:
      return !in.empty() && in.back().isInt() ? matmul_cost(double(in.back().toInt())) : OpCost{};
  }
  return {};
}

}  // namespace ds::profiling
