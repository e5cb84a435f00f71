// ds::ops::CpuOptimizer against torch::optim (Adam, AdamW, Adagrad) and a plain LibTorch Lion,
// on every SIMD instruction set this CPU supports, for sizes 0, 1, 17 and 1M+3; bf16/fp16
// gradients; the fused bf16/fp16 working copy; and the errors for tensors it must refuse.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstdio>

#include "ds/common/error.h"
#include "ds/ops/cpu_optimizer.h"
#include "support/errors.h"

using namespace ds::ops;

namespace {


constexpr int64_t kBig = (int64_t{1} << 20) + 3;
// Steps per size: 100, but 1M+3 gets 20 to keep this file well under 20 s.
int steps_for(int64_t n) { return n >= kBig ? 20 : 100; }

// max |a - b| / max |b|: relative to the tensor's scale, so that elements that happen to cross
// zero do not dominate. Zero for empty tensors.
double rel_error(const at::Tensor& a, const at::Tensor& b) {
  if (b.numel() == 0) return 0;
  const double scale = std::max(b.abs().max().item<double>(), 1e-30);
  return (a.to(at::kDouble) - b.to(at::kDouble)).abs().max().item<double>() / scale;
}

CpuOptimizerOptions options_for(OptimizerKind kind) {
  CpuOptimizerOptions o;
  o.kind = kind;
  o.threads = 2;
  switch (kind) {
    case OptimizerKind::Adam:
      o.lr = 1e-3, o.weight_decay = 0.1;
      break;
    case OptimizerKind::AdamW:
      o.lr = 1e-3, o.weight_decay = 0.1, o.beta1 = 0.8, o.beta2 = 0.99, o.eps = 1e-6;
      break;
    case OptimizerKind::Adagrad:
      o.lr = 1e-2, o.weight_decay = 0.05, o.lr_decay = 0.01, o.initial_accumulator_value = 0.1, o.eps = 1e-10;
      break;
    case OptimizerKind::Lion:
      o.lr = 1e-4, o.weight_decay = 0.5, o.beta1 = 0.9, o.beta2 = 0.99;
      break;
  }
  return o;
}

// The reference: torch::optim, or for Lion the update written with at:: ops. It also records
// which elements' Lion update sign is decided by rounding (|c| within a few ulp of its terms),
// where any two correct implementations may differ.
struct Reference {
  at::Tensor param;
  std::vector<at::Tensor> state;
  at::Tensor sign_ambiguous;  // Lion only
};

Reference run_reference(const CpuOptimizerOptions& o, const at::Tensor& param0,
                        const std::vector<at::Tensor>& grads) {
  torch::NoGradGuard no_grad;
  at::Tensor p = param0.clone();
  const std::vector<at::Tensor> params{p};
  auto state_of = [&](torch::optim::Optimizer& opt) -> torch::optim::OptimizerParamState& {
    return *opt.state().at(c10::guts::to_string(p.unsafeGetTensorImpl()));
  };
  auto run = [&](torch::optim::Optimizer& opt) {
    for (const auto& g : grads) {
      p.mutable_grad() = g.to(at::kFloat);
      opt.step();
    }
  };
  Reference r;
  switch (o.kind) {
    case OptimizerKind::Adam: {
      torch::optim::Adam opt(
          params,
          torch::optim::AdamOptions(o.lr).betas({o.beta1, o.beta2}).eps(o.eps).weight_decay(o.weight_decay));
      run(opt);
      auto& s = static_cast<torch::optim::AdamParamState&>(state_of(opt));
      r.state = {s.exp_avg(), s.exp_avg_sq()};
      break;
    }
    case OptimizerKind::AdamW: {
      torch::optim::AdamW opt(
          params,
          torch::optim::AdamWOptions(o.lr).betas({o.beta1, o.beta2}).eps(o.eps).weight_decay(o.weight_decay));
      run(opt);
      auto& s = static_cast<torch::optim::AdamWParamState&>(state_of(opt));
      r.state = {s.exp_avg(), s.exp_avg_sq()};
      break;
    }
    case OptimizerKind::Adagrad: {
      torch::optim::Adagrad opt(params, torch::optim::AdagradOptions(o.lr)
                                            .lr_decay(o.lr_decay)
                                            .weight_decay(o.weight_decay)
                                            .initial_accumulator_value(o.initial_accumulator_value)
                                            .eps(o.eps));
      run(opt);
      r.state = {static_cast<torch::optim::AdagradParamState&>(state_of(opt)).sum()};
      break;
    }
    case OptimizerKind::Lion: {
      at::Tensor m = at::zeros_like(p);
      r.sign_ambiguous = at::zeros_like(p, at::kBool);
      for (const auto& g16 : grads) {
        const at::Tensor g = g16.to(at::kFloat);
        const at::Tensor a = m * o.beta1, b = g * (1 - o.beta1);
        const at::Tensor c = a + b;
        r.sign_ambiguous |= c.abs() <= 4e-7 * (a.abs() + b.abs());
        p.mul_(1 - o.lr * o.weight_decay);
        p.add_(c.sign(), -o.lr);
        m.mul_(o.beta2).add_(g, 1 - o.beta2);
      }
      r.state = {m};
      break;
    }
  }
  r.param = p;
  return r;
}

struct Ours {
  at::Tensor param;
  std::vector<at::Tensor> state;
};

Ours run_ours(CpuOptimizerOptions o, const std::string& target, const at::Tensor& param0,
              const std::vector<at::Tensor>& grads) {
  o.simd_target = target;
  CpuOptimizer opt(o);
  Ours r{param0.clone(), opt.make_state(param0.numel())};
  for (size_t t = 0; t < grads.size(); ++t) opt.step(r.param, grads[t], r.state, static_cast<int64_t>(t) + 1);
  return r;
}

std::vector<at::Tensor> random_grads(int64_t n, int steps, at::ScalarType dtype, uint64_t seed) {
  torch::manual_seed(seed);
  std::vector<at::Tensor> grads;
  for (int t = 0; t < steps; ++t) grads.push_back(torch::randn({n}).to(dtype));
  return grads;
}

// Runs one optimizer on every target and size and compares with the reference.
void expect_matches_reference(OptimizerKind kind, at::ScalarType grad_dtype,
                              const std::vector<int64_t>& sizes) {
  const CpuOptimizerOptions o = options_for(kind);
  for (int64_t n : sizes) {
    torch::manual_seed(n);
    const at::Tensor param0 = torch::randn({n});
    const auto grads = random_grads(n, steps_for(n), grad_dtype, 1000 + n);
    const Reference ref = run_reference(o, param0, grads);
    for (const auto& target : available_simd_targets()) {
      const Ours ours = run_ours(o, target.name, param0, grads);
      const std::string where = ds::str(to_string(kind), " grad ", grad_dtype, " n=", n, " on ", target.name);
      at::Tensor keep = at::ones_like(param0, at::kBool);
      if (kind == OptimizerKind::Lion) {
        // Elements whose update sign rounding decides may differ by 2 lr per step; they must
        // be rare, and every other element must match.
        keep = ref.sign_ambiguous.logical_not();
        EXPECT_LE(ref.sign_ambiguous.sum().item<int64_t>(), 1 + n / 10000) << where;
      }
      const double perr = rel_error(ours.param.masked_select(keep), ref.param.masked_select(keep));
      EXPECT_LE(perr, 1e-6) << where << ": param";
      ASSERT_EQ(ours.state.size(), ref.state.size());
      for (size_t i = 0; i < ref.state.size(); ++i)
        EXPECT_LE(rel_error(ours.state[i], ref.state[i]), 1e-6) << where << ": state[" << i << "]";
      if (n == kBig) std::printf("%-40s param rel err %.2e\n", where.c_str(), perr);
    }
  }
}

}  // namespace

TEST(CpuOptimizer, AdamMatchesTorchOnEveryTarget) {
  expect_matches_reference(OptimizerKind::Adam, at::kFloat, {0, 1, 17, kBig});
}
TEST(CpuOptimizer, AdamWMatchesTorchOnEveryTarget) {
  expect_matches_reference(OptimizerKind::AdamW, at::kFloat, {0, 1, 17, kBig});
}
TEST(CpuOptimizer, AdagradMatchesTorchOnEveryTarget) {
  expect_matches_reference(OptimizerKind::Adagrad, at::kFloat, {0, 1, 17, kBig});
}
TEST(CpuOptimizer, LionMatchesLibTorchLionOnEveryTarget) {
  expect_matches_reference(OptimizerKind::Lion, at::kFloat, {0, 1, 17, kBig});
}

TEST(CpuOptimizer, Bf16AndFp16GradientsMatchTorchOnTheUpcastGradients) {
  for (auto dtype : {at::kBFloat16, at::kHalf})
    for (auto kind : {OptimizerKind::Adam, OptimizerKind::AdamW, OptimizerKind::Adagrad, OptimizerKind::Lion})
      expect_matches_reference(kind, dtype, {17, 4099});
}

TEST(CpuOptimizer, Fp16GradientsConvertExactlyIncludingInfNanAndSubnormals) {
  // Every fp16 bit pattern as a gradient: the step must equal the step on torch's fp32 upcast
  // of it, bit for bit (NaN where it is NaN), on every target (with and without F16C).
  at::Tensor bits = at::arange(0, 65536, at::kInt).to(at::kShort);
  at::Tensor g16 = bits.view(at::kHalf);
  const int64_t n = g16.numel();
  for (const auto& target : available_simd_targets()) {
    CpuOptimizerOptions o = options_for(OptimizerKind::Adagrad);
    o.simd_target = target.name;
    CpuOptimizer opt(o);
    at::Tensor p16 = at::ones({n}), p32 = at::ones({n});
    auto s16 = opt.make_state(n), s32 = opt.make_state(n);
    opt.step(p16, g16, s16, 1);
    opt.step(p32, g16.to(at::kFloat), s32, 1);
    const at::Tensor same = (p16 == p32) | (p16.isnan() & p32.isnan());
    EXPECT_TRUE(same.all().item<bool>()) << target.name << ": first differing fp16 pattern 0x" << std::hex
                                         << (same.logical_not().nonzero().numel() ? same.logical_not().nonzero()[0].item<int64_t>() : -1);
    EXPECT_TRUE(((s16[0] == s32[0]) | (s16[0].isnan() & s32[0].isnan())).all().item<bool>()) << target.name;
  }
}

TEST(CpuOptimizer, AdamWithoutBiasCorrectionUsesTheRawMoments) {
  CpuOptimizerOptions o = options_for(OptimizerKind::Adam);
  o.bias_correction = false;
  const int64_t n = 1000;
  torch::manual_seed(5);
  const at::Tensor param0 = torch::randn({n});
  const auto grads = random_grads(n, 50, at::kFloat, 6);
  at::Tensor p = param0.clone(), m = at::zeros({n}), v = at::zeros({n});
  for (const auto& g0 : grads) {
    const at::Tensor g = g0 + o.weight_decay * p;
    m.mul_(o.beta1).add_(g, 1 - o.beta1);
    v.mul_(o.beta2).addcmul_(g, g, 1 - o.beta2);
    p.addcdiv_(m, v.sqrt() + o.eps, -o.lr);
  }
  for (const auto& target : available_simd_targets()) {
    const Ours ours = run_ours(o, target.name, param0, grads);
    EXPECT_LE(rel_error(ours.param, p), 1e-6) << target.name;
    EXPECT_LE(rel_error(ours.state[1], v), 1e-6) << target.name;
  }
}

TEST(CpuOptimizer, FusedHalfCopyEqualsParamToBf16AndFp16) {
  for (auto dtype : {at::kBFloat16, at::kHalf}) {
    for (auto kind : {OptimizerKind::Adam, OptimizerKind::Lion}) {
      for (const auto& target : available_simd_targets()) {
        for (int64_t n : {int64_t{1}, int64_t{17}, int64_t{70001}}) {
          CpuOptimizerOptions o = options_for(kind);
          o.simd_target = target.name;
          CpuOptimizer opt(o);
          torch::manual_seed(n);
          at::Tensor p = torch::randn({n}) * 100;  // spread over many binades
          auto state = opt.make_state(n);
          at::Tensor half = at::empty({n}, dtype);
          at::Tensor widened = at::empty({n});  // fp32 holding the rounded values
          for (int64_t t = 1; t <= 3; ++t) {
            at::Tensor g = torch::randn({n}).to(dtype);
            at::Tensor p2 = p.clone();
            auto state2 = state;
            for (auto& s : state2) s = s.clone();
            opt.step(p, g, state, t, o.lr, &half);
            EXPECT_TRUE(at::equal(half, p.to(dtype)))
                << to_string(kind) << " " << dtype << " n=" << n << " on " << target.name << " step " << t;
            opt.step(p2, g, state2, t, o.lr, &widened, dtype);
            EXPECT_TRUE(at::equal(p2, p)) << "the fp32 copy changes the update";
            EXPECT_TRUE(at::equal(widened, p.to(dtype).to(at::kFloat)))
                << to_string(kind) << " fp32 copy of " << dtype << " n=" << n << " on " << target.name;
          }
        }
      }
    }
  }
}

TEST(CpuOptimizer, HalfCopyRoundsLikeTorchIncludingTiesInfNanAndSubnormals) {
  // lr = 0 and zero gradients leave the parameters as they are, so the working copy shows the
  // conversion alone.
  std::vector<float> values = {0.0f,
                               -0.0f,
                               1.0f,
                               -2.5f,
                               65504.0f,
                               65519.996f,
                               65520.0f,
                               -65520.0f,
                               1e6f,
                               3.0e38f,
                               std::numeric_limits<float>::max(),
                               INFINITY,
                               -INFINITY,
                               std::numeric_limits<float>::denorm_min(),
                               1e-40f,
                               6.0e-8f,
                               2.9802322e-8f,
                               2.9802326e-8f,
                               5.96e-8f,
                               -3.0e-5f,
                               6.1035156e-5f,
                               6.1e-5f,
                               1e-30f};
  // Exact ties for bf16 (bits ...8000 with even and odd kept lsb) and for fp16.
  for (uint32_t bits : {0x3F808000u, 0x3F818000u, 0x3F801000u, 0x3F803000u, 0x477FE000u, 0x477FF000u,
                        0x38FFE000u, 0x33000000u, 0x33C00000u, 0x7F7F8000u}) {
    float f;
    std::memcpy(&f, &bits, 4);
    values.push_back(f);
  }
  torch::manual_seed(3);
  for (int i = 0; i < 1000; ++i) values.push_back(std::ldexp(torch::randn({1}).item<float>(), i % 60 - 40));
  const int64_t n = static_cast<int64_t>(values.size());
  const at::Tensor values_t = torch::from_blob(values.data(), {n}).clone();
  for (auto dtype : {at::kBFloat16, at::kHalf}) {
    for (const auto& target : available_simd_targets()) {
      CpuOptimizerOptions o;
      o.lr = 0;
      o.simd_target = target.name;
      CpuOptimizer opt(o);
      at::Tensor p = values_t.clone();
      auto state = opt.make_state(n);
      at::Tensor half = at::empty({n}, dtype);
      opt.step(p, at::zeros({n}), state, 1, 0.0, &half);
      ASSERT_TRUE(at::equal(p, values_t)) << target.name;
      const at::Tensor expected = values_t.to(dtype);
      EXPECT_TRUE(at::equal(half.view(at::kShort), expected.view(at::kShort)))
          << dtype << " on " << target.name << ": first mismatch at "
          << (half.view(at::kShort) != expected.view(at::kShort)).nonzero().flatten().slice(0, 0, 1);
      at::Tensor widened = at::empty({n});
      opt.step(p, at::zeros({n}), state, 2, 0.0, &widened, dtype);
      const at::Tensor expected32 = expected.to(at::kFloat);
      EXPECT_TRUE(at::equal(widened.view(at::kInt), expected32.view(at::kInt)))
          << "fp32 copy of " << dtype << " on " << target.name << ": first mismatch at "
          << (widened.view(at::kInt) != expected32.view(at::kInt)).nonzero().flatten().slice(0, 0, 1);
    }
    // NaN: torch's scalar and vector conversions disagree on the payload; both must be NaN.
    CpuOptimizerOptions o;
    o.lr = 0;
    CpuOptimizer opt(o);
    at::Tensor p = at::full({5}, NAN);
    auto state = opt.make_state(5);
    at::Tensor half = at::zeros({5}, dtype);
    opt.step(p, at::zeros({5}), state, 1, 0.0, &half);
    EXPECT_TRUE(half.isnan().all().item<bool>()) << dtype;
  }
}

TEST(CpuOptimizer, LrArgumentOverridesTheOptions) {
  const int64_t n = 333;
  torch::manual_seed(9);
  const at::Tensor param0 = torch::randn({n});
  const auto grads = random_grads(n, 10, at::kFloat, 10);
  CpuOptimizerOptions o = options_for(OptimizerKind::AdamW);
  CpuOptimizer fixed(o);
  CpuOptimizerOptions wrong = o;
  wrong.lr = 123.0;
  CpuOptimizer overridden(wrong);
  at::Tensor a = param0.clone(), b = param0.clone();
  auto sa = fixed.make_state(n), sb = overridden.make_state(n);
  for (int64_t t = 1; t <= 10; ++t) {
    fixed.step(a, grads[t - 1], sa, t);
    overridden.step(b, grads[t - 1], sb, t, o.lr);
  }
  EXPECT_TRUE(at::equal(a, b));
}

TEST(CpuOptimizer, MakeStateGivesTheRightTensorsPerOptimizer) {
  auto make = [](OptimizerKind kind) {
    CpuOptimizerOptions o;
    o.kind = kind;
    o.initial_accumulator_value = 0.25;
    return CpuOptimizer(o).make_state(7);
  };
  EXPECT_EQ(make(OptimizerKind::Adam).size(), 2u);
  EXPECT_EQ(make(OptimizerKind::AdamW).size(), 2u);
  EXPECT_EQ(make(OptimizerKind::Lion).size(), 1u);
  const auto adagrad = make(OptimizerKind::Adagrad);
  ASSERT_EQ(adagrad.size(), 1u);
  EXPECT_TRUE(at::equal(adagrad[0], at::full({7}, 0.25)));
  for (const auto& s : make(OptimizerKind::Adam)) {
    EXPECT_EQ(s.scalar_type(), at::kFloat);
    EXPECT_TRUE(s.is_contiguous());
    EXPECT_EQ(s.count_nonzero().item<int64_t>(), 0);
  }
}

TEST(CpuOptimizer, ThreadsOptionIsHonoured) {
  CpuOptimizerOptions o;
  o.threads = 1;
  EXPECT_EQ(CpuOptimizer(o).threads(), 1);
  o.threads = 3;
  EXPECT_EQ(CpuOptimizer(o).threads(), 3);
  o.threads = 0;
  EXPECT_EQ(CpuOptimizer(o).threads(), at::get_num_threads());
}

TEST(CpuOptimizer, RejectsBadTensorsWithTheOffendingValuesAndLeavesParamsAlone) {
  CpuOptimizerOptions o;
  CpuOptimizer opt(o);
  const int64_t n = 17;
  at::Tensor p = torch::randn({n});
  at::Tensor g = torch::randn({n});
  auto state = opt.make_state(n);
  const at::Tensor before = p.clone();

  // Non-contiguous parameter: a strided view of a bigger buffer. DeepSpeed would update a copy.
  at::Tensor big = torch::randn({2 * n});
  at::Tensor strided = big.slice(0, 0, 2 * n, 2);
  const at::Tensor big_before = big.clone();
  EXPECT_ERROR_HAS(opt.step(strided, g, state, 1), "param is not contiguous (float32 [17] strides [2]");
  EXPECT_TRUE(at::equal(big, big_before));
  at::Tensor t2 = torch::randn({4, 5}).t();
  auto s20 = opt.make_state(20);
  EXPECT_ERROR_HAS(opt.step(t2, torch::randn({20}), s20, 1), "param is not contiguous");
  at::Tensor g_strided = torch::randn({2 * n}).slice(0, 0, 2 * n, 2);
  EXPECT_ERROR_HAS(opt.step(p, g_strided, state, 1), "grad is not contiguous");

  // Wrong dtypes.
  at::Tensor pd = torch::randn({n}, at::kDouble);
  EXPECT_ERROR_HAS(opt.step(pd, g, state, 1), "param must be float32, got float64 [17]");
  EXPECT_ERROR_HAS(opt.step(p, g.to(at::kInt), state, 1),
                   "grad must be float32 or bfloat16 or float16, got int32");
  std::vector<at::Tensor> half_state = {state[0].to(at::kHalf), state[1]};
  EXPECT_ERROR_HAS(opt.step(p, g, half_state, 1), "state[0] must be float32, got float16");
  at::Tensor copy32 = at::empty({n});
  EXPECT_ERROR_HAS(opt.step(p, g, state, 1, 1e-3, &copy32),
                   "an fp32 working copy needs the precision to round to (bf16 or fp16)");
  at::Tensor copy64 = at::empty({n}, at::kDouble);
  EXPECT_ERROR_HAS(opt.step(p, g, state, 1, 1e-3, &copy64),
                   "half_copy must be bfloat16 or float16 or float32, got float64");

  // Wrong sizes and counts.
  EXPECT_ERROR_HAS(opt.step(p, torch::randn({16}), state, 1), "grad has 16 elements");
  EXPECT_ERROR_HAS(opt.step(p, torch::randn({16}), state, 1), "but param has 17");
  std::vector<at::Tensor> short_state = {state[0], at::zeros({3})};
  EXPECT_ERROR_HAS(opt.step(p, g, short_state, 1), "state[1] has 3 elements");
  std::vector<at::Tensor> one_state = {state[0]};
  EXPECT_ERROR_HAS(opt.step(p, g, one_state, 1), "Adam needs 2 state tensor(s) (see make_state), got 1");
  at::Tensor copy_short = at::empty({5}, at::kBFloat16);
  EXPECT_ERROR_HAS(opt.step(p, g, state, 1, 1e-3, &copy_short), "half_copy has 5 elements");

  // Aliasing and bad step.
  std::vector<at::Tensor> aliased = {state[0], state[0]};
  EXPECT_ERROR_HAS(opt.step(p, g, aliased, 1), "overlaps state1");
  EXPECT_ERROR_HAS(opt.step(p, g, state, 0), "step is 1-based and must be >= 1, got 0");
  EXPECT_ERROR_HAS(opt.step(p, g, state, 1, -1.0), "lr must be finite and >= 0, got -1");
  at::Tensor undefined;
  EXPECT_ERROR_HAS(opt.step(p, undefined, state, 1), "grad is an undefined tensor");

  EXPECT_TRUE(at::equal(p, before)) << "a refused step must not write";

  // Bad options.
  CpuOptimizerOptions bad;
  bad.threads = -1;
  EXPECT_ERROR_HAS(CpuOptimizer{bad}, "threads must be >= 0 (0 = at::get_num_threads()), got -1");
  bad = CpuOptimizerOptions{};
  bad.simd_target = "NEON";
  EXPECT_ERROR_HAS(CpuOptimizer{bad}, "SIMD target 'NEON' is not available on this CPU");
  bad = CpuOptimizerOptions{};
  bad.beta1 = 1.5;
  EXPECT_ERROR_HAS(CpuOptimizer{bad}, "Adam: beta1 must be in [0, 1), got 1.5");
  bad = CpuOptimizerOptions{};
  bad.kind = OptimizerKind::Adagrad;
  bad.initial_accumulator_value = -1;
  EXPECT_ERROR_HAS(CpuOptimizer{bad}, "initial_accumulator_value must be finite and >= 0, got -1");
}
