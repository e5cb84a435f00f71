// Private to src/sparse: the SIMD tile operations the fused block-sparse attention is made of,
// written once with Google Highway (tile_kernels_hwy.cpp, compiled per x86-64 instruction set,
// the best one for this CPU chosen at run time). No LibTorch: raw row-major tiles of at most
// block x block (or block x head width) elements, small enough to stay in L1/L2.
#pragma once

#include <cstdint>

namespace ds::sparse::detail {

template <typename T>
struct TileOps {
  // C[M x N] = alpha * A' B + beta * C, where A'(i, p) = A[i * a_row + p * a_col] (so one
  // kernel serves A and its transpose) and B is row-major [K x N] with leading dimension ldb.
  // beta is 0 (C is overwritten, never read) or 1.
  void (*gemm)(int64_t M, int64_t N, int64_t K, T alpha, const T* A, int64_t a_row, int64_t a_col, const T* B,
               int64_t ldb, T beta, T* C, int64_t ldc);
  // One step of an online softmax over the scores S[M x N] (-inf where masked): m (running
  // row max) and l (running sum of exponentials) are updated, S becomes exp(S - m_new) and
  // corr[i] = exp(m_old - m_new), the factor the row's running output must be multiplied by.
  // A row masked so far keeps m = -inf, l = 0 and gets zeros.
  void (*softmax_step)(int64_t M, int64_t N, T* S, int64_t lds, T* m, T* l, T* corr);
  // S = exp(S - lse[i]) in place: the probabilities again in the backward pass (a row with
  // lse = -inf, whose every key was masked, gets zeros).
  void (*exp_minus)(int64_t M, int64_t N, T* S, int64_t lds, const T* lse);
  // dP = scale * P * (dP - delta[i]) in place: the softmax's backward, delta = rowsum(dO * O).
  void (*softmax_grad)(int64_t M, int64_t N, const T* P, int64_t ldp, T* dP, int64_t ldd, const T* delta, T scale);
  // X[i, :] *= f[i].
  void (*scale_rows)(int64_t M, int64_t N, T* X, int64_t ld, const T* f);
};

// The operations for the best instruction set this CPU has, and its name ("AVX2", "AVX3", ...).
const TileOps<float>& tile_ops_f32();
const TileOps<double>& tile_ops_f64();
const char* tile_simd_target();

}  // namespace ds::sparse::detail
