#include "ds/sparse/attention.h"

#include <ATen/ATen.h>
#include <torch/autograd.h>

#include <cmath>
#include <limits>
#include <vector>

#include "ds/common/error.h"
#include "ds/sparse/layout.h"
#include "src/sparse/fused_attention.h"
#include "src/sparse/tile_kernels.h"

namespace ds::sparse {

namespace {

int64_t blocks_of(int64_t T, int64_t block) { return (T + block - 1) / block; }

void check_shapes(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t heads, int64_t blocks,
                  int64_t block, const AttentionOptions& o) {
  if (q.dim() != 4) throw Error(ds::str("block_sparse_attention: q must be [batch, heads, seq, width], got ", q.sizes()));
  if (!q.device().is_cpu() || !k.device().is_cpu() || !v.device().is_cpu())
    throw Error(ds::str("block_sparse_attention: the kernels run on the CPU; q is on ", q.device()));
  if (o.scale < 0) throw Error(ds::str("block_sparse_attention: scale must be positive (0: 1 / sqrt(width)), got ", o.scale));
  if (k.sizes() != q.sizes() || v.sizes() != q.sizes())
    throw Error(ds::str("block_sparse_attention: k ", k.sizes(), " and v ", v.sizes(), " must have q's shape ", q.sizes()));
  const int64_t H = q.size(1), T = q.size(2);
  if (block < 1) throw Error(ds::str("block_sparse_attention: block must be at least 1, got ", block));
  if (heads != H || blocks != blocks_of(T, block))
    throw Error(ds::str("block_sparse_attention: the layout is [", heads, ", ", blocks, ", ", blocks, "] but ", H,
                        " heads of ", T, " tokens in blocks of ", block, " need [", H, ", ", blocks_of(T, block), ", ",
                        blocks_of(T, block), "]"));
  if (o.key_padding_mask.defined() &&
      (o.key_padding_mask.dim() != 2 || o.key_padding_mask.size(0) != q.size(0) || o.key_padding_mask.size(1) != T))
    throw Error(ds::str("block_sparse_attention: key_padding_mask is ", o.key_padding_mask.sizes(), ", expected [",
                        q.size(0), ", ", T, "]"));
  if (o.attn_mask.defined() && (o.attn_mask.dim() != 2 || o.attn_mask.size(0) != T || o.attn_mask.size(1) != T))
    throw Error(ds::str("block_sparse_attention: attn_mask is ", o.attn_mask.sizes(), ", expected [", T, ", ", T, "]"));
  if (o.attn_mask.defined() && !at::isFloatingType(o.attn_mask.scalar_type()))
    throw Error(ds::str("block_sparse_attention: attn_mask is ", o.attn_mask.scalar_type(),
                        "; it is added to the scores: give a float mask (0 to keep, -inf to mask)"));
  if (o.attn_mask.defined() && o.attn_mask.requires_grad())
    throw Error("block_sparse_attention: attn_mask requires grad, but the kernels give it no gradient (a learned bias "
                "needs dense attention)");
}

void check_layout(const at::Tensor& layout) {
  if (layout.dim() != 3 || layout.size(1) != layout.size(2))
    throw Error(ds::str("block_sparse_attention: a layout is [heads, blocks, blocks], got ", layout.sizes()));
}

at::Tensor long_tensor(const std::vector<int64_t>& v) {
  return at::from_blob(const_cast<int64_t*>(v.data()), {int64_t(v.size())}, at::kLong).clone();
}

// The autograd node around the fused kernels. Inputs arrive contiguous in the compute dtype
// (fp32 or fp64); the plan and masks ride along in FusedArgs (not differentiated).
struct BlockSparseFunction : torch::autograd::Function<BlockSparseFunction> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& q, const at::Tensor& k,
                            const at::Tensor& v, const detail::FusedArgs& a) {
    auto [out, lse] = detail::fused_forward(q, k, v, a);
    ctx->save_for_backward({q, k, v, out, lse});
    ctx->saved_data["row_ptr"] = a.row_ptr;
    ctx->saved_data["cols"] = a.cols;
    ctx->saved_data["block"] = a.block;
    ctx->saved_data["causal"] = a.causal;
    ctx->saved_data["scale"] = a.scale;
    ctx->saved_data["key_padding"] = a.key_padding;
    ctx->saved_data["attn_mask"] = a.attn_mask;
    return out;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    // The backward runs on raw pointers: its result cannot be differentiated again.
    if (torch::autograd::GradMode::is_enabled())
      throw Error("block_sparse_attention: no double backward (create_graph); the kernels' backward is not differentiable");
    const auto s = ctx->get_saved_variables();
    auto& d = ctx->saved_data;
    const detail::FusedArgs a{d["row_ptr"].toTensor(), d["cols"].toTensor(),    d["block"].toInt(),
                              d["causal"].toBool(),    d["scale"].toDouble(),    d["key_padding"].toTensor(),
                              d["attn_mask"].toTensor()};
    auto [dq, dk, dv] = detail::fused_backward(grads[0], s[0], s[1], s[2], s[3], s[4], a);
    return {dq, dk, dv, {}};
  }
};

}  // namespace

SparsePlan plan_block_sparse(const at::Tensor& layout, int64_t block) {
  check_layout(layout);
  if (block < 1) throw Error(ds::str("block_sparse_attention: block must be at least 1, got ", block));
  const at::Tensor l = layout.to(at::kBool).contiguous();
  const auto a = l.accessor<bool, 3>();
  SparsePlan plan;
  plan.heads = l.size(0), plan.blocks = l.size(1), plan.block = block;
  std::vector<int64_t> row_ptr{0}, cols;
  for (int64_t h = 0; h < plan.heads; ++h)
    for (int64_t r = 0; r < plan.blocks; ++r) {
      for (int64_t c = 0; c < plan.blocks; ++c)
        if (a[h][r][c]) cols.push_back(c);
      row_ptr.push_back(int64_t(cols.size()));
    }
  plan.row_ptr = long_tensor(row_ptr);
  plan.cols = long_tensor(cols);
  return plan;
}

at::Tensor full_layout(int64_t heads, int64_t seq_len, int64_t block, bool causal) {
  const int64_t nb = blocks_of(seq_len, block);
  at::Tensor l = at::ones({heads, nb, nb}, at::kBool);
  return causal ? l.tril() : l;
}

const char* kernel_target() { return detail::tile_simd_target(); }

at::Tensor block_sparse_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                  const at::Tensor& layout, int64_t block, const AttentionOptions& o) {
  check_layout(layout);
  check_shapes(q, k, v, layout.size(0), layout.size(1), block, o);
  return block_sparse_attention(q, k, v, plan_block_sparse(layout, block), o);
}

at::Tensor block_sparse_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const SparsePlan& plan,
                                  const AttentionOptions& o) {
  check_shapes(q, k, v, plan.heads, plan.blocks, plan.block, o);
  const at::ScalarType compute = q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const double scale = o.scale > 0 ? o.scale : 1.0 / std::sqrt(double(q.size(3)));
  const auto prepare = [&](const at::Tensor& x) { return x.to(compute).contiguous(); };
  const at::Tensor padding = o.key_padding_mask.defined() ? o.key_padding_mask.to(at::kBool).contiguous() : at::Tensor();
  const at::Tensor additive = o.attn_mask.defined() ? o.attn_mask.to(compute).contiguous() : at::Tensor();
  const detail::FusedArgs args{plan.row_ptr, plan.cols, plan.block, o.causal, scale, padding, additive};
  const at::Tensor y = BlockSparseFunction::apply(prepare(q), prepare(k), prepare(v), args);
  return y.to(q.scalar_type());
}

at::Tensor dense_masked_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                  const at::Tensor& layout, int64_t block, const AttentionOptions& o) {
  check_layout(layout);
  check_shapes(q, k, v, layout.size(0), layout.size(1), block, o);
  const int64_t B = q.size(0), T = q.size(2), D = q.size(3);
  const double scale = o.scale > 0 ? o.scale : 1.0 / std::sqrt(double(D));
  at::Tensor s = at::matmul(q, k.transpose(-1, -2)).to(at::kDouble == q.scalar_type() ? at::kDouble : at::kFloat) * scale;
  at::Tensor mask = token_mask(layout.to(at::kBool), block).slice(1, 0, T).slice(2, 0, T).logical_not().unsqueeze(0);
  if (o.causal) mask = mask | at::ones({T, T}, at::kBool).triu(1);
  if (o.key_padding_mask.defined()) mask = mask | o.key_padding_mask.to(at::kBool).view({B, 1, 1, T});
  if (o.attn_mask.defined()) s = s + o.attn_mask.to(s.scalar_type());
  mask = mask.expand_as(s);
  s = s.masked_fill(mask, -std::numeric_limits<double>::infinity()).masked_fill(mask.all(-1, true), 0.0);
  return at::matmul(at::softmax(s, -1).masked_fill(mask, 0.0).to(v.scalar_type()), v);
}

}  // namespace ds::sparse
