// The tile operations of the fused block-sparse attention (tile_kernels.h), written once with
// Google Highway: foreach_target.h compiles this file once per x86-64 instruction set and
// tile_ops_f32()/tile_ops_f64() hand out the best one this CPU runs. No LibTorch here.
//
// The GEMM is a register-blocked micro-kernel (6, then 4, then 1 rows x 2 vectors of
// accumulators; the B strip of a tile reused across all rows of A while it sits in L1). No
// packing: tiles are block x block (64 by default), which fit L1/L2; much larger blocks run
// correctly but slower. Exponentials use Highway's vectorized Exp (1 ulp); masked scores
// (-inf) are clamped to the lowest finite value first, inside Exp's documented range.

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "src/sparse/tile_kernels_hwy.cpp"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
#include "hwy/contrib/math/math-inl.h"

#include <cmath>
#include <limits>

#include "src/sparse/tile_kernels.h"

HWY_BEFORE_NAMESPACE();
namespace ds::sparse::detail::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// Rows [i, i + MR) x vectors [j, j + NV * lanes) of C.
template <int MR, int NV, class D, typename T = hn::TFromD<D>>
HWY_INLINE void GemmBlock(D d, int64_t i, int64_t j, int64_t K, T alpha, const T* A, int64_t a_row, int64_t a_col,
                          const T* B, int64_t ldb, T beta, T* C, int64_t ldc) {
  const int64_t L = int64_t(hn::Lanes(d));
  hn::Vec<D> acc[MR][NV];
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = hn::Zero(d);
  const T* a = A + i * a_row;
  for (int64_t p = 0; p < K; ++p) {
    hn::Vec<D> b[NV];
    for (int v = 0; v < NV; ++v) b[v] = hn::LoadU(d, B + p * ldb + j + v * L);
    for (int r = 0; r < MR; ++r) {
      const auto ar = hn::Set(d, a[r * a_row + p * a_col]);
      for (int v = 0; v < NV; ++v) acc[r][v] = hn::MulAdd(ar, b[v], acc[r][v]);
    }
  }
  const auto va = hn::Set(d, alpha);
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) {
      T* c = C + (i + r) * ldc + j + v * L;
      const auto out = hn::Mul(acc[r][v], va);
      hn::StoreU(beta == T(0) ? out : hn::Add(out, hn::LoadU(d, c)), d, c);
    }
}

template <int NV, class D, typename T = hn::TFromD<D>>
HWY_INLINE void GemmColumns(D d, int64_t M, int64_t j, int64_t K, T alpha, const T* A, int64_t a_row, int64_t a_col,
                            const T* B, int64_t ldb, T beta, T* C, int64_t ldc) {
  int64_t i = 0;
  for (; i + 6 <= M; i += 6) GemmBlock<6, NV>(d, i, j, K, alpha, A, a_row, a_col, B, ldb, beta, C, ldc);
  for (; i + 4 <= M; i += 4) GemmBlock<4, NV>(d, i, j, K, alpha, A, a_row, a_col, B, ldb, beta, C, ldc);
  for (; i < M; ++i) GemmBlock<1, NV>(d, i, j, K, alpha, A, a_row, a_col, B, ldb, beta, C, ldc);
}

template <typename T>
void Gemm(int64_t M, int64_t N, int64_t K, T alpha, const T* A, int64_t a_row, int64_t a_col, const T* B, int64_t ldb,
          T beta, T* C, int64_t ldc) {
  const hn::ScalableTag<T> d;
  const int64_t L = int64_t(hn::Lanes(d));
  int64_t j = 0;
  for (; j + 2 * L <= N; j += 2 * L) GemmColumns<2>(d, M, j, K, alpha, A, a_row, a_col, B, ldb, beta, C, ldc);
  for (; j + L <= N; j += L) GemmColumns<1>(d, M, j, K, alpha, A, a_row, a_col, B, ldb, beta, C, ldc);
  for (; j < N; ++j)  // columns left over from the vectors: a block that is not a multiple of them
    for (int64_t i = 0; i < M; ++i) {
      T s = 0;
      for (int64_t p = 0; p < K; ++p) s += A[i * a_row + p * a_col] * B[p * ldb + j];
      C[i * ldc + j] = alpha * s + (beta == T(0) ? T(0) : C[i * ldc + j]);
    }
}

// x[0, N) -> f(x) in place, vectors then a scalar tail.
template <class D, class VecOp, class ScalarOp>
HWY_INLINE void MapRow(D d, int64_t N, hn::TFromD<D>* x, const VecOp& vec, const ScalarOp& scalar) {
  const int64_t L = int64_t(hn::Lanes(d));
  int64_t j = 0;
  for (; j + L <= N; j += L) hn::StoreU(vec(hn::LoadU(d, x + j)), d, x + j);
  for (; j < N; ++j) x[j] = scalar(x[j]);
}

template <class D, typename T = hn::TFromD<D>>
HWY_INLINE T RowMax(D d, int64_t N, const T* x) {
  const int64_t L = int64_t(hn::Lanes(d));
  T m = -std::numeric_limits<T>::infinity();
  int64_t j = 0;
  if (N >= L) {
    auto v = hn::LoadU(d, x);
    for (j = L; j + L <= N; j += L) v = hn::Max(v, hn::LoadU(d, x + j));
    m = hn::GetLane(hn::MaxOfLanes(d, v));
  }
  for (; j < N; ++j) m = x[j] > m ? x[j] : m;
  return m;
}

template <class D, typename T = hn::TFromD<D>>
HWY_INLINE T RowSum(D d, int64_t N, const T* x) {
  const int64_t L = int64_t(hn::Lanes(d));
  auto v = hn::Zero(d);
  int64_t j = 0;
  for (; j + L <= N; j += L) v = hn::Add(v, hn::LoadU(d, x + j));
  T s = hn::GetLane(hn::SumOfLanes(d, v));
  for (; j < N; ++j) s += x[j];
  return s;
}

// exp(x - shift) for a row, in place.
template <class D, typename T = hn::TFromD<D>>
HWY_INLINE void ExpMinus(D d, int64_t N, T* x, T shift) {
  const auto vs = hn::Set(d, shift), lowest = hn::Set(d, std::numeric_limits<T>::lowest());
  MapRow(
      d, N, x, [&](auto v) { return hn::Exp(d, hn::Max(hn::Sub(v, vs), lowest)); },
      [&](T s) { return std::exp(s - shift); });
}

template <typename T>
void SoftmaxStep(int64_t M, int64_t N, T* S, int64_t lds, T* m, T* l, T* corr) {
  const hn::ScalableTag<T> d;
  constexpr T kNegInf = -std::numeric_limits<T>::infinity();
  for (int64_t i = 0; i < M; ++i) {
    T* s = S + i * lds;
    const T row_max = RowMax(d, N, s);
    const T m_new = row_max > m[i] ? row_max : m[i];
    const T shift = m_new == kNegInf ? T(0) : m_new;  // a row masked so far: exp(-inf) = 0
    ExpMinus(d, N, s, shift);
    corr[i] = std::exp(m[i] - shift);
    l[i] = l[i] * corr[i] + RowSum(d, N, s);
    m[i] = m_new;
  }
}

template <typename T>
void ExpMinusRows(int64_t M, int64_t N, T* S, int64_t lds, const T* lse) {
  const hn::ScalableTag<T> d;
  constexpr T kNegInf = -std::numeric_limits<T>::infinity();
  for (int64_t i = 0; i < M; ++i) {
    T* s = S + i * lds;
    if (lse[i] == kNegInf) {
      for (int64_t j = 0; j < N; ++j) s[j] = 0;
    } else {
      ExpMinus(d, N, s, lse[i]);
    }
  }
}

template <typename T>
void SoftmaxGrad(int64_t M, int64_t N, const T* P, int64_t ldp, T* dP, int64_t ldd, const T* delta, T scale) {
  const hn::ScalableTag<T> d;
  const int64_t L = int64_t(hn::Lanes(d));
  const auto vscale = hn::Set(d, scale);
  for (int64_t i = 0; i < M; ++i) {
    const T* p = P + i * ldp;
    T* g = dP + i * ldd;
    const auto vdelta = hn::Set(d, delta[i]);
    int64_t j = 0;
    for (; j + L <= N; j += L) {
      const auto v = hn::Mul(hn::Mul(hn::LoadU(d, p + j), hn::Sub(hn::LoadU(d, g + j), vdelta)), vscale);
      hn::StoreU(v, d, g + j);
    }
    for (; j < N; ++j) g[j] = p[j] * (g[j] - delta[i]) * scale;
  }
}

template <typename T>
void ScaleRows(int64_t M, int64_t N, T* X, int64_t ld, const T* f) {
  const hn::ScalableTag<T> d;
  for (int64_t i = 0; i < M; ++i) {
    const auto vf = hn::Set(d, f[i]);
    MapRow(
        d, N, X + i * ld, [&](auto v) { return hn::Mul(v, vf); }, [&](T x) { return x * f[i]; });
  }
}

template <typename T>
TileOps<T> MakeOps() {
  return {&Gemm<T>, &SoftmaxStep<T>, &ExpMinusRows<T>, &SoftmaxGrad<T>, &ScaleRows<T>};
}

TileOps<float> OpsF32() { return MakeOps<float>(); }
TileOps<double> OpsF64() { return MakeOps<double>(); }
const char* TargetName() { return hwy::TargetName(HWY_TARGET); }

}  // namespace ds::sparse::detail::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace ds::sparse::detail {

HWY_EXPORT(OpsF32);
HWY_EXPORT(OpsF64);
HWY_EXPORT(TargetName);

const TileOps<float>& tile_ops_f32() {
  static const TileOps<float> ops = HWY_DYNAMIC_DISPATCH(OpsF32)();
  return ops;
}
const TileOps<double>& tile_ops_f64() {
  static const TileOps<double> ops = HWY_DYNAMIC_DISPATCH(OpsF64)();
  return ops;
}
const char* tile_simd_target() { return HWY_DYNAMIC_DISPATCH(TargetName)(); }

}  // namespace ds::sparse::detail
#endif  // HWY_ONCE
