#include "ds/sparse/attention.h"

#include <ATen/ATen.h>

#include <cmath>
#include <limits>
#include <map>

#include "ds/common/error.h"
#include "ds/sparse/layout.h"

namespace ds::sparse {

namespace {

void check_shapes(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t heads, int64_t blocks,
                  int64_t block, const AttentionOptions& o) {
  if (q.dim() != 4) throw Error(ds::str("block_sparse_attention: q must be [batch, heads, seq, width], got ", q.sizes()));
  if (k.sizes() != q.sizes() || v.sizes() != q.sizes())
    throw Error(ds::str("block_sparse_attention: k ", k.sizes(), " and v ", v.sizes(), " must have q's shape ", q.sizes()));
  const int64_t H = q.size(1), T = q.size(2);
  if (block < 1 || T % block != 0)
    throw Error(ds::str("block_sparse_attention: the sequence length ", T, " is not a multiple of block ", block));
  if (heads != H || blocks != T / block)
    throw Error(ds::str("block_sparse_attention: the layout is [", heads, ", ", blocks, ", ", blocks, "] but ", H,
                        " heads of ", T, " tokens in blocks of ", block, " need [", H, ", ", T / block, ", ", T / block, "]"));
  if (o.key_padding_mask.defined() &&
      (o.key_padding_mask.dim() != 2 || o.key_padding_mask.size(0) != q.size(0) || o.key_padding_mask.size(1) != T))
    throw Error(ds::str("block_sparse_attention: key_padding_mask is ", o.key_padding_mask.sizes(), ", expected [",
                        q.size(0), ", ", T, "]"));
  if (o.attn_mask.defined() && (o.attn_mask.dim() != 2 || o.attn_mask.size(0) != T || o.attn_mask.size(1) != T))
    throw Error(ds::str("block_sparse_attention: attn_mask is ", o.attn_mask.sizes(), ", expected [", T, ", ", T, "]"));
}

void check_layout(const at::Tensor& layout) {
  if (layout.dim() != 3 || layout.size(1) != layout.size(2))
    throw Error(ds::str("block_sparse_attention: a layout is [heads, blocks, blocks], got ", layout.sizes()));
}

// Block rows (over all heads, flat index h * nb + r) grouped by their kept-block count
// rounded up to a power of two: rows, and for each the kept key blocks (flat h * nb + c),
// padded with the row's first kept block (or 0) and flagged invalid.
struct Group {
  std::vector<int64_t> rows, cols;
  std::vector<uint8_t> valid;
  int64_t width = 1;
};

std::map<int64_t, Group> group_rows(const at::Tensor& layout) {
  const at::Tensor l = layout.to(at::kBool).contiguous();
  const auto a = l.accessor<bool, 3>();
  const int64_t H = l.size(0), nb = l.size(1);
  std::map<int64_t, Group> groups;
  std::vector<int64_t> kept;
  for (int64_t h = 0; h < H; ++h)
    for (int64_t r = 0; r < nb; ++r) {
      kept.clear();
      for (int64_t c = 0; c < nb; ++c)
        if (a[h][r][c]) kept.push_back(h * nb + c);
      int64_t width = 1;
      while (width < int64_t(kept.size())) width *= 2;
      Group& g = groups[width];
      g.width = width;
      g.rows.push_back(h * nb + r);
      for (int64_t j = 0; j < width; ++j) {
        const bool ok = j < int64_t(kept.size());
        g.cols.push_back(ok ? kept[size_t(j)] : (kept.empty() ? h * nb : kept[0]));
        g.valid.push_back(ok ? 1 : 0);
      }
    }
  return groups;
}

at::Tensor long_tensor(const std::vector<int64_t>& v) {
  return at::from_blob(const_cast<int64_t*>(v.data()), {int64_t(v.size())}, at::kLong).clone();
}

}  // namespace

SparsePlan plan_block_sparse(const at::Tensor& layout, int64_t block) {
  check_layout(layout);
  if (block < 1) throw Error(ds::str("block_sparse_attention: block must be at least 1, got ", block));
  SparsePlan plan;
  plan.heads = layout.size(0), plan.blocks = layout.size(1), plan.block = block;
  const int64_t nb = plan.blocks;
  const at::Tensor offsets = at::arange(block, at::kLong);
  std::vector<int64_t> order;
  for (const auto& [width, g] : group_rows(layout)) {
    const int64_t R = int64_t(g.rows.size()), W = width;
    SparsePlan::Group p;
    p.width = W;
    p.rows = long_tensor(g.rows);
    p.cols = long_tensor(g.cols);
    p.padding = at::from_blob(const_cast<uint8_t*>(g.valid.data()), {R, W}, at::kByte)
                    .eq(0)
                    .repeat_interleave(block, 1)
                    .view({R, 1, W * block});
    p.q_pos = (p.rows % nb).view({R, 1}) * block + offsets.view({1, block});
    p.k_pos = ((p.cols % nb).view({R, W, 1}) * block + offsets.view({1, 1, block})).view({R, W * block});
    plan.groups.push_back(std::move(p));
    order.insert(order.end(), g.rows.begin(), g.rows.end());
  }
  std::vector<int64_t> where(order.size());  // position of block row i in the concatenation
  for (size_t i = 0; i < order.size(); ++i) where[size_t(order[i])] = int64_t(i);
  plan.order = long_tensor(where);
  return plan;
}

at::Tensor block_sparse_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                  const at::Tensor& layout, int64_t block, const AttentionOptions& o) {
  check_layout(layout);
  check_shapes(q, k, v, layout.size(0), layout.size(1), block, o);
  return block_sparse_attention(q, k, v, plan_block_sparse(layout, block), o);
}

at::Tensor block_sparse_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const SparsePlan& plan,
                                  const AttentionOptions& o) {
  const int64_t block = plan.block;
  check_shapes(q, k, v, plan.heads, plan.blocks, block, o);
  const int64_t B = q.size(0), H = q.size(1), T = q.size(2), D = q.size(3), nb = T / block;
  const double scale = o.scale > 0 ? o.scale : 1.0 / std::sqrt(double(D));
  const at::Tensor qf = q.reshape({B, H * nb, block, D}), kf = k.reshape({B, H * nb, block, D}),
                   vf = v.reshape({B, H * nb, block, D});
  std::vector<at::Tensor> outs;
  for (const SparsePlan::Group& g : plan.groups) {
    const int64_t R = g.rows.size(0), W = g.width;
    const at::Tensor qg = qf.index_select(1, g.rows);                                 // [B, R, block, D]
    const at::Tensor kg = kf.index_select(1, g.cols).reshape({B, R, W * block, D});   // kept keys per row
    const at::Tensor vg = vf.index_select(1, g.cols).reshape({B, R, W * block, D});
    at::Tensor s = at::matmul(qg, kg.transpose(-1, -2));                              // [B, R, block, W*block]
    if (s.scalar_type() != at::kFloat && s.scalar_type() != at::kDouble) s = s.to(at::kFloat);
    s = s * scale;
    at::Tensor masked = g.padding;
    if (o.causal) masked = masked | (g.k_pos.view({R, 1, W * block}) > g.q_pos.view({R, block, 1}));
    at::Tensor mask = masked.expand({B, R, block, W * block});
    if (o.key_padding_mask.defined())
      mask = mask | o.key_padding_mask.to(at::kBool).index_select(1, g.k_pos.reshape(-1)).view({B, R, 1, W * block});
    if (o.attn_mask.defined())
      s = s + o.attn_mask.to(s.scalar_type()).index({g.q_pos.view({R, block, 1}), g.k_pos.view({R, 1, W * block})});
    s = s.masked_fill(mask, -std::numeric_limits<double>::infinity());
    // A query with no key left: finite scores for the softmax, then zeros.
    s = s.masked_fill(mask.all(-1, /*keepdim=*/true), 0.0);
    at::Tensor p = at::softmax(s, -1).masked_fill(mask, 0.0).to(v.scalar_type());
    outs.push_back(at::matmul(p, vg));                                                // [B, R, block, D]
  }
  return at::cat(outs, 1).index_select(1, plan.order).reshape({B, H, T, D});
}

at::Tensor dense_masked_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                  const at::Tensor& layout, int64_t block, const AttentionOptions& o) {
  check_layout(layout);
  check_shapes(q, k, v, layout.size(0), layout.size(1), block, o);
  const int64_t B = q.size(0), T = q.size(2), D = q.size(3);
  const double scale = o.scale > 0 ? o.scale : 1.0 / std::sqrt(double(D));
  at::Tensor s = at::matmul(q, k.transpose(-1, -2)).to(at::kDouble == q.scalar_type() ? at::kDouble : at::kFloat) * scale;
  at::Tensor mask = token_mask(layout.to(at::kBool), block).logical_not().unsqueeze(0);      // [1, H, T, T]
  if (o.causal) mask = mask | at::ones({T, T}, at::kBool).triu(1);
  if (o.key_padding_mask.defined()) mask = mask | o.key_padding_mask.to(at::kBool).view({B, 1, 1, T});
  if (o.attn_mask.defined()) s = s + o.attn_mask.to(s.scalar_type());
  mask = mask.expand_as(s);
  s = s.masked_fill(mask, -std::numeric_limits<double>::infinity()).masked_fill(mask.all(-1, true), 0.0);
  return at::matmul(at::softmax(s, -1).masked_fill(mask, 0.0).to(v.scalar_type()), v);
}

}  // namespace ds::sparse
