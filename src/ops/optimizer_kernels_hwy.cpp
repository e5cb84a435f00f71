// The SIMD bodies of the CPU optimizers, written once with Google Highway. foreach_target.h
// compiles this file once per x86-64 instruction set (AVX3, AVX2, SSE4, SSSE3, scalar); each
// copy lives in its own namespace (N_AVX2, ...) and registers a table of 60 kernels
// (4 optimizers x 3 gradient types x 5 working-copy types). No LibTorch here: this TU is
// compiled five times and must stay quick to build.
//
// Numerics follow torch::optim step for step (same operation order, fp32 arithmetic, fused
// multiply-add where ATen's vectorized kernels use one), so results agree to a few ulp.
// bf16/fp16 conversions round to nearest even, as c10::BFloat16 / c10::Half do.

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "src/ops/optimizer_kernels_hwy.cpp"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"

#include <array>
#include <cstring>
#include <utility>

#include "src/ops/kernel_registry.h"

HWY_BEFORE_NAMESPACE();
namespace ds::ops::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

using detail::HalfOut;
using detail::StepCoefficients;
using DF = hn::ScalableTag<float>;
using VF = hn::Vec<DF>;

// ---- conversions ---------------------------------------------------------------------

// fp16 bits (in the low half of int32 lanes) -> fp32, exactly: normals and subnormals, and
// inf/NaN kept (Highway's emulated PromoteTo on targets without F16C turns exponent 31 into
// a finite number).
HWY_INLINE VF F16BitsToF32Portable(DF df, hn::Vec<hn::RebindToSigned<DF>> h) {
  const hn::RebindToSigned<DF> di;
  const auto sign = hn::ShiftLeft<16>(hn::And(h, hn::Set(di, 0x8000)));
  const auto exp = hn::And(hn::ShiftRight<10>(h), hn::Set(di, 0x1F));
  const auto mant = hn::And(h, hn::Set(di, 0x3FF));
  const auto normal = hn::Or(hn::ShiftLeft<23>(hn::Add(exp, hn::Set(di, 112))), hn::ShiftLeft<13>(mant));
  const auto special = hn::Or(hn::Set(di, 0x7F800000), hn::ShiftLeft<13>(mant));  // inf, NaN
  const auto subnormal = hn::BitCast(di, hn::Mul(hn::ConvertTo(df, mant), hn::Set(df, 5.9604644775390625e-8f)));
  auto bits = hn::IfThenElse(hn::Eq(exp, hn::Zero(di)), subnormal, normal);
  bits = hn::IfThenElse(hn::Eq(exp, hn::Set(di, 0x1F)), special, bits);
  return hn::BitCast(df, hn::Or(bits, sign));
}

// fp16 -> fp32: hardware where the target has F16C, else the portable conversion.
HWY_INLINE VF PromoteF16(DF df, hn::Vec<hn::Rebind<uint16_t, DF>> h16) {
#if HWY_TARGET <= HWY_AVX2 && !defined(HWY_DISABLE_F16C)
  const hn::Rebind<hwy::float16_t, DF> dh;
  return hn::PromoteTo(df, hn::BitCast(dh, h16));
#else
  const hn::RebindToSigned<DF> di;
  return F16BitsToF32Portable(df, hn::BitCast(di, hn::PromoteTo(hn::RebindToUnsigned<DF>(), h16)));
#endif
}

template <ElemType G>
HWY_INLINE VF LoadGrad(DF df, const void* grad, int64_t i) {
  if constexpr (G == ElemType::F32) {
    return hn::LoadU(df, static_cast<const float*>(grad) + i);
  } else if constexpr (G == ElemType::BF16) {
    const hn::Rebind<hwy::bfloat16_t, DF> dbf;
    return hn::PromoteTo(df, hn::LoadU(dbf, static_cast<const hwy::bfloat16_t*>(grad) + i));
  } else {
    const hn::Rebind<uint16_t, DF> du16;
    return PromoteF16(df, hn::LoadU(du16, static_cast<const uint16_t*>(grad) + i));  // exact
  }
}

// fp32 -> bf16 bits, round to nearest even; NaN -> 0x7FC0 (c10::BFloat16's choice). Highway's
// own DemoteTo(bf16) truncates, hence this.
HWY_INLINE hn::Vec<hn::RebindToSigned<DF>> ToBF16Bits(DF df, VF v) {
  const hn::RebindToUnsigned<DF> du;
  const hn::RebindToSigned<DF> di;
  const auto bits = hn::BitCast(du, v);
  const auto lsb = hn::And(hn::ShiftRight<16>(bits), hn::Set(du, 1u));
  const auto rounded = hn::ShiftRight<16>(hn::Add(bits, hn::Add(lsb, hn::Set(du, 0x7FFFu))));
  const auto is_nan = hn::RebindMask(du, hn::Ne(v, v));
  return hn::BitCast(di, hn::IfThenElse(is_nan, hn::Set(du, 0x7FC0u), rounded));
}

// fp32 -> fp16 bits, round to nearest even, overflow to inf, NaN -> 0x7E00 with the sign
// (c10::Half's choice), subnormals exact. Written in integer ops for the targets without F16C;
// Highway's emulation there truncates.
HWY_INLINE hn::Vec<hn::RebindToSigned<DF>> ToF16BitsPortable(DF df, VF v) {
  const hn::RebindToSigned<DF> di;
  const auto bits = hn::BitCast(di, v);
  const auto sign = hn::And(bits, hn::Set(di, static_cast<int32_t>(0x80000000u)));
  const auto abs = hn::Xor(bits, sign);  // >= 0 as int32
  // Normal range: rebias the exponent (127 -> 15) and round the 13 dropped mantissa bits.
  const auto lsb = hn::And(hn::ShiftRight<13>(abs), hn::Set(di, 1));
  const auto normal =
      hn::ShiftRight<13>(hn::Add(hn::Sub(abs, hn::Set(di, 0x38000000)), hn::Add(lsb, hn::Set(di, 0xFFF))));
  // Below 2^-14: adding 0.5 puts the fp16 subnormal step (2^-24) at the float's last mantissa
  // bit, so the FPU does the rounding; 1024 comes out as the smallest normal, as it should.
  const auto shifted = hn::Add(hn::BitCast(df, abs), hn::Set(df, 0.5f));
  const auto subnormal = hn::Sub(hn::BitCast(di, shifted), hn::Set(di, 0x3F000000));
  auto out = hn::IfThenElse(hn::Lt(abs, hn::Set(di, 0x38800000)), subnormal, normal);
  out = hn::IfThenElse(hn::Lt(abs, hn::Set(di, 0x477FF000)), out, hn::Set(di, 0x7C00));  // >= 65520: inf
  out = hn::IfThenElse(hn::Gt(abs, hn::Set(di, 0x7F800000)), hn::Set(di, 0x7E00), out);  // NaN
  const hn::RebindToUnsigned<DF> du;
  return hn::Or(out, hn::BitCast(di, hn::ShiftRight<16>(hn::BitCast(du, sign))));
}

// fp32 -> fp16 bits (as uint16 lanes), round to nearest even.
HWY_INLINE hn::Vec<hn::Rebind<uint16_t, DF>> ToF16Bits(DF df, VF v) {
  const hn::Rebind<uint16_t, DF> du16;
#if HWY_TARGET <= HWY_AVX2 && !defined(HWY_DISABLE_F16C)
  const hn::Rebind<hwy::float16_t, DF> dh;  // F16C / AVX-512: hardware, round to nearest even
  return hn::BitCast(du16, hn::DemoteTo(dh, v));
#else
  return hn::DemoteTo(du16, ToF16BitsPortable(df, v));
#endif
}

template <HalfOut H>
HWY_INLINE void StoreHalf(DF df, VF v, void* out, int64_t i) {
  if constexpr (H == HalfOut::BF16) {
    const hn::Rebind<uint16_t, DF> du16;
    hn::StoreU(hn::DemoteTo(du16, ToBF16Bits(df, v)), du16, static_cast<uint16_t*>(out) + i);
  } else if constexpr (H == HalfOut::F16) {
    const hn::Rebind<uint16_t, DF> du16;
    hn::StoreU(ToF16Bits(df, v), du16, static_cast<uint16_t*>(out) + i);
  } else if constexpr (H == HalfOut::BF16AsF32) {  // the bf16 value, widened back (exact)
    const hn::RebindToUnsigned<DF> du;
    const auto bits = hn::ShiftLeft<16>(hn::BitCast(du, ToBF16Bits(df, v)));
    hn::StoreU(hn::BitCast(df, bits), df, static_cast<float*>(out) + i);
  } else if constexpr (H == HalfOut::F16AsF32) {  // the fp16 value, widened back (exact)
    hn::StoreU(PromoteF16(df, ToF16Bits(df, v)), df, static_cast<float*>(out) + i);
  }
}

// ---- one vector of each optimizer ------------------------------------------------------

// Coefficients broadcast once per range.
struct CoefVecs {
  VF beta1, one_minus_beta1, beta2, one_minus_beta2, eps, neg_step_size, inv_sqrt_bc2, l2_decay, param_scale;
  explicit CoefVecs(DF df, const StepCoefficients& c)
      : beta1(hn::Set(df, c.beta1)),
        one_minus_beta1(hn::Set(df, c.one_minus_beta1)),
        beta2(hn::Set(df, c.beta2)),
        one_minus_beta2(hn::Set(df, c.one_minus_beta2)),
        eps(hn::Set(df, c.eps)),
        neg_step_size(hn::Set(df, c.neg_step_size)),
        inv_sqrt_bc2(hn::Set(df, c.inv_sqrt_bias_correction2)),
        l2_decay(hn::Set(df, c.l2_decay)),
        param_scale(hn::Set(df, c.param_scale)) {}
};

// The raw pointers of one range (grad and half copy keep their own element types).
struct Streams {
  float* param;
  const void* grad;
  float* s0;
  float* s1;
  void* half;
};

template <OptimizerKind K, ElemType G, HalfOut H>
HWY_INLINE void UpdateVector(DF df, const CoefVecs& c, bool l2, const Streams& s, int64_t i) {
  VF g = LoadGrad<G>(df, s.grad, i);
  VF p = hn::LoadU(df, s.param + i);
  VF m = hn::LoadU(df, s.s0 + i);
  if constexpr (K == OptimizerKind::Adam || K == OptimizerKind::AdamW) {
    VF v = hn::LoadU(df, s.s1 + i);
    if constexpr (K == OptimizerKind::Adam) {
      if (l2) g = hn::MulAdd(p, c.l2_decay, g);  // grad += wd * param
    } else {
      p = hn::Mul(p, c.param_scale);  // param *= 1 - lr * wd
    }
    m = hn::MulAdd(g, c.one_minus_beta1, hn::Mul(m, c.beta1));
    v = hn::MulAdd(hn::Mul(g, c.one_minus_beta2), g, hn::Mul(v, c.beta2));
    const VF denom = hn::MulAdd(hn::Sqrt(v), c.inv_sqrt_bc2, c.eps);
    p = hn::Add(p, hn::Div(hn::Mul(c.neg_step_size, m), denom));
    hn::StoreU(v, df, s.s1 + i);
  } else if constexpr (K == OptimizerKind::Adagrad) {
    if (l2) g = hn::MulAdd(p, c.l2_decay, g);
    m = hn::MulAdd(g, g, m);  // m is the sum of squares here
    const VF denom = hn::Add(hn::Sqrt(m), c.eps);
    p = hn::Add(p, hn::Div(hn::Mul(c.neg_step_size, g), denom));
  } else {  // Lion
    p = hn::Mul(p, c.param_scale);
    const VF interp = hn::MulAdd(g, c.one_minus_beta1, hn::Mul(m, c.beta1));
    const VF one = hn::Set(df, 1.0f);
    const VF sign = hn::IfThenZeroElse(hn::Eq(interp, hn::Zero(df)), hn::CopySign(one, interp));
    p = hn::MulAdd(sign, c.neg_step_size, p);
    m = hn::MulAdd(g, c.one_minus_beta2, hn::Mul(m, c.beta2));
  }
  hn::StoreU(m, df, s.s0 + i);
  hn::StoreU(p, df, s.param + i);
  StoreHalf<H>(df, p, s.half, i);
}

constexpr size_t ElemBytes(ElemType t) { return t == ElemType::F32 ? 4 : 2; }

template <OptimizerKind K, ElemType G, HalfOut H>
void UpdateRange(const StepCoefficients& coef, const FlatBuffers& b, int64_t begin, int64_t end) {
  const DF df;
  const CoefVecs c(df, coef);
  const bool l2 = coef.l2_decay != 0.0f;
  const int64_t lanes = static_cast<int64_t>(hn::Lanes(df));
  const Streams s{b.param, b.grad, b.state0, b.state1, b.half_copy};
  int64_t i = begin;
  for (; i + lanes <= end; i += lanes) UpdateVector<K, G, H>(df, c, l2, s, i);
  if (i == end) return;

  // The last end - i < lanes elements: copy into zero-padded scratch, run the same vector code,
  // copy back. Keeps the tail's numerics identical to the body's, with no alignment demands.
  constexpr size_t kMax = HWY_MAX_BYTES / sizeof(float);
  const size_t r = static_cast<size_t>(end - i);
  HWY_ALIGN float p[kMax] = {}, s0[kMax] = {}, s1[kMax] = {};
  HWY_ALIGN uint8_t g[kMax * 4] = {};
  HWY_ALIGN float h[kMax] = {};  // the copy's tail: 2 or 4 bytes per element
  const size_t gb = ElemBytes(G);
  std::memcpy(p, b.param + i, r * 4);
  std::memcpy(s0, b.state0 + i, r * 4);
  if (b.state1) std::memcpy(s1, b.state1 + i, r * 4);
  std::memcpy(g, static_cast<const uint8_t*>(b.grad) + i * gb, r * gb);
  UpdateVector<K, G, H>(df, c, l2, Streams{p, g, s0, s1, h}, 0);
  std::memcpy(b.param + i, p, r * 4);
  std::memcpy(b.state0 + i, s0, r * 4);
  if (b.state1) std::memcpy(b.state1 + i, s1, r * 4);
  if constexpr (H != HalfOut::None) {
    constexpr size_t hb = (H == HalfOut::BF16AsF32 || H == HalfOut::F16AsF32) ? 4 : 2;
    std::memcpy(static_cast<uint8_t*>(b.half_copy) + i * hb, h, r * hb);
  }
}

// ---- the table this target registers ----------------------------------------------------

template <size_t I>
constexpr detail::RangeKernel TableEntry() {
  constexpr auto kind = static_cast<OptimizerKind>(I / (detail::kNumGradTypes * detail::kNumHalfOuts));
  constexpr auto grad = static_cast<ElemType>((I / detail::kNumHalfOuts) % detail::kNumGradTypes);
  constexpr auto half = static_cast<HalfOut>(I % detail::kNumHalfOuts);
  static_assert(detail::table_index(kind, grad, half) == static_cast<int>(I));
  return &UpdateRange<kind, grad, half>;
}
template <size_t... I>
constexpr std::array<detail::RangeKernel, sizeof...(I)> MakeTable(std::index_sequence<I...>) {
  return {TableEntry<I>()...};
}
constexpr std::array<detail::RangeKernel, detail::kTableSize> kTable =
    MakeTable(std::make_index_sequence<detail::kTableSize>());

int64_t ThisTarget() { return HWY_TARGET; }

[[maybe_unused]] const bool kRegistered = detail::register_kernels(HWY_TARGET, kTable.data());

}  // namespace ds::ops::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace ds::ops::detail {

HWY_EXPORT(ThisTarget);

int64_t dispatched_simd_target() { return HWY_DYNAMIC_DISPATCH(ThisTarget)(); }

}  // namespace ds::ops::detail
#endif  // HWY_ONCE
