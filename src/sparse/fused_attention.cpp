#include "src/sparse/fused_attention.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/record_function.h>

#include <algorithm>
#include <limits>
#include <vector>

#include "src/sparse/tile_kernels.h"

namespace ds::sparse::detail {

namespace {

template <typename T>
const TileOps<T>& ops();
template <>
const TileOps<float>& ops<float>() { return tile_ops_f32(); }
template <>
const TileOps<double>& ops<double>() { return tile_ops_f64(); }

// Where one (batch, head) lives, and the masks that apply to its tiles.
template <typename T>
struct Head {
  const T *q, *k, *v, *kt;  // kt: this head's keys transposed block by block, [nb, D, block]
  const bool* padding;      // this batch row's key padding [T], or null
  const T* attn_mask;       // [T, T], or null
  int64_t T_len, D, block;
  bool causal;
  T scale;
  int64_t rows(int64_t r) const { return std::min(block, T_len - r * block); }
};

// True when the tile (query block r, key block c) has no unmasked entry under the causal mask.
bool causal_skip(bool causal, int64_t r, int64_t c) { return causal && c > r; }

// S [M x N] (ld block) = scale * Q_r K_cᵀ plus the masks: additive, causal, key padding.
template <typename T>
void scores(const Head<T>& h, int64_t r, int64_t c, T* S) {
  const int64_t M = h.rows(r), N = h.rows(c), q0 = r * h.block, k0 = c * h.block, ld = h.block;
  ops<T>().gemm(M, N, h.D, h.scale, h.q + q0 * h.D, h.D, 1, h.kt + c * h.D * h.block, h.block, T(0), S, ld);
  constexpr T kNegInf = -std::numeric_limits<T>::infinity();
  if (h.attn_mask)
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j) S[i * ld + j] += h.attn_mask[(q0 + i) * h.T_len + k0 + j];
  if (h.causal && c == r)
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = i + 1; j < N; ++j) S[i * ld + j] = kNegInf;
  if (h.padding)
    for (int64_t j = 0; j < N; ++j)
      if (h.padding[k0 + j])
        for (int64_t i = 0; i < M; ++i) S[i * ld + j] = kNegInf;
}

// x [B, H, T, D] as [B, H, nb, D, block]: each key block transposed and contiguous, so a GEMM
// reads its rows block elements apart (a [D, T] transpose would put them T apart: every row
// in the same L1 set at long T). A partial last block is padded with zeros.
at::Tensor blocks_transposed(const at::Tensor& x, int64_t block) {
  const int64_t B = x.size(0), H = x.size(1), T = x.size(2), D = x.size(3), nb = (T + block - 1) / block;
  const at::Tensor padded = nb * block == T ? x : at::constant_pad_nd(x, {0, 0, 0, nb * block - T});
  return padded.view({B, H, nb, block, D}).transpose(-1, -2).contiguous();
}

template <typename T>
Head<T> head_of(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& kt,
                const FusedArgs& a, int64_t b, int64_t bh) {
  const int64_t T_len = q.size(2), D = q.size(3), stride = T_len * D;
  const int64_t kt_stride = kt.size(2) * kt.size(3) * kt.size(4);
  Head<T> h{q.data_ptr<T>() + bh * stride, k.data_ptr<T>() + bh * stride, v.data_ptr<T>() + bh * stride,
            kt.data_ptr<T>() + bh * kt_stride, nullptr, nullptr, T_len, D, a.block, a.causal, T(a.scale)};
  if (a.key_padding.defined()) h.padding = a.key_padding.data_ptr<bool>() + b * T_len;
  if (a.attn_mask.defined()) h.attn_mask = a.attn_mask.data_ptr<T>();
  return h;
}

template <typename T>
void forward_impl(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const FusedArgs& a, at::Tensor& out,
                  at::Tensor& lse) {
  const int64_t B = q.size(0), H = q.size(1), T_len = q.size(2), D = q.size(3), block = a.block;
  const int64_t nb = (T_len + block - 1) / block;
  const at::Tensor kt = blocks_transposed(k, block);
  const int64_t* row_ptr = a.row_ptr.data_ptr<int64_t>();
  const int64_t* cols = a.cols.data_ptr<int64_t>();
  T* out_p = out.data_ptr<T>();
  T* lse_p = lse.data_ptr<T>();
  at::parallel_for(0, B * H * nb, 1, [&](int64_t begin, int64_t end) {
    const size_t n = size_t(block);
    std::vector<T> S(n * n), m(n), l(n), corr(n);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t bh = task / nb, r = task % nb, b = bh / H, hd = bh % H;
      const Head<T> h = head_of<T>(q, k, v, kt, a, b, bh);
      const int64_t M = h.rows(r);
      T* o = out_p + bh * T_len * D + r * block * D;  // accumulates in place, [M x D]
      std::fill(o, o + M * D, T(0));
      std::fill(m.begin(), m.end(), -std::numeric_limits<T>::infinity());
      std::fill(l.begin(), l.end(), T(0));
      for (int64_t e = row_ptr[hd * nb + r]; e < row_ptr[hd * nb + r + 1]; ++e) {
        const int64_t c = cols[e];
        if (causal_skip(a.causal, r, c)) continue;
        scores(h, r, c, S.data());
        ops<T>().softmax_step(M, h.rows(c), S.data(), block, m.data(), l.data(), corr.data());
        ops<T>().scale_rows(M, D, o, D, corr.data());
        ops<T>().gemm(M, D, h.rows(c), T(1), S.data(), block, 1, h.v + c * block * D, D, T(1), o, D);
      }
      for (int64_t i = 0; i < M; ++i) {
        const bool empty = l[size_t(i)] == T(0);
        corr[size_t(i)] = empty ? T(0) : T(1) / l[size_t(i)];
        lse_p[bh * T_len + r * block + i] = empty ? -std::numeric_limits<T>::infinity() : m[size_t(i)] + std::log(l[size_t(i)]);
      }
      ops<T>().scale_rows(M, D, o, D, corr.data());
    }
  });
}

// Query block rows [r_begin, r_end) of one (batch, head): their tiles' contributions to dQ
// (rows of their own), and to dK and dV (any key block: into dk_h / dv_h, which the caller
// makes this task's own).
template <typename T>
void backward_rows(const Head<T>& h, const FusedArgs& a, int64_t hd, int64_t nb, int64_t r_begin, int64_t r_end,
                   const T* vt_h, const T* dout_h, const T* lse_h, const T* delta_h, T* dq_h, T* dk_h, T* dv_h,
                   T* P, T* dS) {
  const int64_t* row_ptr = a.row_ptr.data_ptr<int64_t>();
  const int64_t* cols = a.cols.data_ptr<int64_t>();
  const int64_t block = h.block, D = h.D;
  for (int64_t r = r_begin; r < r_end; ++r) {
    const int64_t M = h.rows(r), q0 = r * block;
    for (int64_t e = row_ptr[hd * nb + r]; e < row_ptr[hd * nb + r + 1]; ++e) {
      const int64_t c = cols[e], N = h.rows(c), k0 = c * block;
      if (causal_skip(a.causal, r, c)) continue;
      scores(h, r, c, P);
      ops<T>().exp_minus(M, N, P, block, lse_h + q0);
      // dV_c += Pᵀ dO_r; dP = dO_r V_cᵀ; dS = scale * P * (dP - delta); dQ_r += dS K_c; dK_c += dSᵀ Q_r
      ops<T>().gemm(N, D, M, T(1), P, 1, block, dout_h + q0 * D, D, T(1), dv_h + k0 * D, D);
      ops<T>().gemm(M, N, D, T(1), dout_h + q0 * D, D, 1, vt_h + c * D * block, block, T(0), dS, block);
      ops<T>().softmax_grad(M, N, P, block, dS, block, delta_h + q0, h.scale);
      ops<T>().gemm(M, D, N, T(1), dS, block, 1, h.k + k0 * D, D, T(1), dq_h + q0 * D, D);
      ops<T>().gemm(N, D, M, T(1), dS, 1, block, h.q + q0 * D, D, T(1), dk_h + k0 * D, D);
    }
  }
}

// Split each head's query block rows into `chunks` ranges of about equal tile counts.
std::vector<int64_t> row_ranges(const FusedArgs& a, int64_t hd, int64_t nb, int64_t chunks) {
  const int64_t* row_ptr = a.row_ptr.data_ptr<int64_t>();
  const int64_t* cols = a.cols.data_ptr<int64_t>();
  std::vector<int64_t> work(size_t(nb) + 1, 0);  // tiles before row r
  for (int64_t r = 0; r < nb; ++r) {
    int64_t n = 0;
    for (int64_t e = row_ptr[hd * nb + r]; e < row_ptr[hd * nb + r + 1]; ++e) n += causal_skip(a.causal, r, cols[e]) ? 0 : 1;
    work[size_t(r) + 1] = work[size_t(r)] + n;
  }
  std::vector<int64_t> bounds{0};
  for (int64_t j = 1; j < chunks; ++j) {
    const int64_t target = work[size_t(nb)] * j / chunks;
    int64_t r = bounds.back();
    while (r < nb && work[size_t(r)] < target) ++r;
    bounds.push_back(r);
  }
  bounds.push_back(nb);
  return bounds;
}

// Tasks are (batch x head, row range). A (batch, head) owns its key and value gradients, so
// with at least as many pairs as threads each is one task. With fewer (one long sequence, few
// heads), each pair's rows split into ranges of about equal work; a range after the first
// accumulates its dK and dV into a buffer of its own, summed in at the end: deterministic for
// a thread count, and at most about threads x T x D x 2 more floats.
template <typename T>
void backward_impl(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                   const at::Tensor& lse, const at::Tensor& delta, const FusedArgs& a, at::Tensor& dq, at::Tensor& dk,
                   at::Tensor& dv) {
  const int64_t B = q.size(0), H = q.size(1), T_len = q.size(2), D = q.size(3), block = a.block;
  const int64_t nb = (T_len + block - 1) / block, pairs = B * H;
  const int64_t chunks = std::clamp<int64_t>((at::get_num_threads() + pairs - 1) / pairs, 1, nb);
  const at::Tensor kt = blocks_transposed(k, block), vt = blocks_transposed(v, block);
  std::vector<std::vector<int64_t>> ranges;
  for (int64_t hd = 0; hd < H; ++hd) ranges.push_back(row_ranges(a, hd, nb, chunks));
  at::Tensor dk_more, dv_more;  // [chunks - 1, B * H, T, D]: the later ranges' dK, dV
  if (chunks > 1) {
    dk_more = at::zeros({chunks - 1, pairs, T_len, D}, q.options());
    dv_more = at::zeros({chunks - 1, pairs, T_len, D}, q.options());
  }
  at::parallel_for(0, pairs * chunks, 1, [&](int64_t begin, int64_t end) {
    const size_t n = size_t(block);
    std::vector<T> P(n * n), dS(n * n);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t bh = task / chunks, chunk = task % chunks, b = bh / H, hd = bh % H, off = bh * T_len * D;
      const Head<T> h = head_of<T>(q, k, v, kt, a, b, bh);
      const T* vt_h = vt.data_ptr<T>() + bh * vt.size(2) * vt.size(3) * vt.size(4);
      T* dk_h = chunk == 0 ? dk.data_ptr<T>() + off : dk_more.data_ptr<T>() + ((chunk - 1) * pairs + bh) * T_len * D;
      T* dv_h = chunk == 0 ? dv.data_ptr<T>() + off : dv_more.data_ptr<T>() + ((chunk - 1) * pairs + bh) * T_len * D;
      const std::vector<int64_t>& r = ranges[size_t(hd)];
      backward_rows<T>(h, a, hd, nb, r[size_t(chunk)], r[size_t(chunk) + 1], vt_h, dout.data_ptr<T>() + off,
                       lse.data_ptr<T>() + bh * T_len, delta.data_ptr<T>() + bh * T_len, dq.data_ptr<T>() + off, dk_h,
                       dv_h, P.data(), dS.data());
    }
  });
  if (chunks > 1) {
    dk.view({pairs, T_len, D}) += dk_more.sum(0);
    dv.view({pairs, T_len, D}) += dv_more.sum(0);
  }
}

// Multiply-adds of one tile GEMM over every tile the kernels compute (kept, not above the
// diagonal when causal): sum of rows x keys x D. What the flops profiler is told.
int64_t tile_macs(const at::Tensor& q, const FusedArgs& a) {
  const int64_t B = q.size(0), H = q.size(1), T_len = q.size(2), D = q.size(3), nb = (T_len + a.block - 1) / a.block;
  const int64_t* row_ptr = a.row_ptr.data_ptr<int64_t>();
  const int64_t* cols = a.cols.data_ptr<int64_t>();
  auto rows = [&](int64_t r) { return std::min(a.block, T_len - r * a.block); };
  int64_t area = 0;
  for (int64_t h = 0; h < H; ++h)
    for (int64_t r = 0; r < nb; ++r)
      for (int64_t e = row_ptr[h * nb + r]; e < row_ptr[h * nb + r + 1]; ++e)
        if (!causal_skip(a.causal, r, cols[e])) area += rows(r) * rows(cols[e]);
  return B * area * D;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> fused_forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                 const FusedArgs& a) {
  // Priced by the flops profiler (src/profiling/op_cost.cpp): 2 tile GEMMs.
  RECORD_FUNCTION("ds::block_sparse_attention", std::vector<c10::IValue>({q, k, v, c10::IValue(2 * tile_macs(q, a))}));
  at::Tensor out = at::empty_like(q), lse = at::empty({q.size(0), q.size(1), q.size(2)}, q.options());
  if (q.numel() == 0) return {out, lse.fill_(-std::numeric_limits<double>::infinity())};
  if (q.scalar_type() == at::kDouble) {
    forward_impl<double>(q, k, v, a, out, lse);
  } else {
    forward_impl<float>(q, k, v, a, out, lse);
  }
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> fused_backward(const at::Tensor& dout, const at::Tensor& q,
                                                              const at::Tensor& k, const at::Tensor& v,
                                                              const at::Tensor& out, const at::Tensor& lse,
                                                              const FusedArgs& a) {
  // 5 tile GEMMs: the scores again, dV, dP, dQ, dK.
  RECORD_FUNCTION("ds::block_sparse_attention_backward",
                  std::vector<c10::IValue>({dout, q, k, v, c10::IValue(5 * tile_macs(q, a))}));
  const at::Tensor g = dout.to(q.scalar_type()).contiguous();
  const at::Tensor delta = (g * out).sum(-1).contiguous();  // rowsum(dO * O): the softmax backward's shift
  at::Tensor dq = at::zeros_like(q), dk = at::zeros_like(k), dv = at::zeros_like(v);
  if (q.numel() == 0) return {dq, dk, dv};  // no batch, head, token or width: nothing to split
  if (q.scalar_type() == at::kDouble) {
    backward_impl<double>(g, q, k, v, lse, delta, a, dq, dk, dv);
  } else {
    backward_impl<float>(g, q, k, v, lse, delta, a, dq, dk, dv);
  }
  return {dq, dk, dv};
}

}  // namespace ds::sparse::detail
