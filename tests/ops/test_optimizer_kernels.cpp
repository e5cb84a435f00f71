// The raw-pointer layer without LibTorch: the thread pool, SIMD target selection, argument
// checks, and properties of the kernels that need no reference implementation (thread count
// and tiling do not change results; every target agrees with the scalar one).
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <mutex>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "ds/common/error.h"
#include "ds/ops/optimizer_kernels.h"
#include "support/errors.h"

using namespace ds::ops;

namespace {


// Buffers for one optimizer over n elements, filled with reproducible random data.
struct Problem {
  std::vector<float> param, grad, s0, s1;
  std::vector<uint16_t> half;
  explicit Problem(int64_t n, uint32_t seed = 1) : param(n), grad(n), s0(n), s1(n), half(n) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> normal;
    for (int64_t i = 0; i < n; ++i) {
      param[i] = normal(rng);
      grad[i] = normal(rng);
      s0[i] = 0.1f * normal(rng);
      s1[i] = std::abs(normal(rng));  // a valid exp_avg_sq / Adagrad sum
    }
  }
  FlatBuffers buffers(OptimizerKind kind, bool with_half) {
    FlatBuffers b;
    b.n = static_cast<int64_t>(param.size());
    b.param = param.data();
    b.grad = grad.data();
    b.state0 = (kind == OptimizerKind::Adagrad) ? s1.data() : s0.data();
    b.state1 = state_count(kind) == 2 ? s1.data() : nullptr;
    if (with_half) b.half_copy = half.data();
    return b;
  }
  bool operator==(const Problem& o) const {
    auto same = [](const auto& a, const auto& b) {
      return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(a[0])) == 0;
    };
    return same(param, o.param) && same(s0, o.s0) && same(s1, o.s1) && same(half, o.half);
  }
};

// max |a - b| / max |b|: relative to the buffer's scale (elements near zero after cancellation
// would otherwise turn a one-ulp difference into a large relative one).
double rel_error(const std::vector<float>& a, const std::vector<float>& b) {
  double diff = 0, scale = 1e-30;
  for (size_t i = 0; i < a.size(); ++i) {
    diff = std::max(diff, std::abs(double(a[i]) - b[i]));
    scale = std::max(scale, std::abs(double(b[i])));
  }
  return diff / scale;
}

OptimizerHyper hyper(OptimizerKind kind, int64_t step = 3) {
  OptimizerHyper h;
  h.kind = kind;
  h.lr = 1e-2;
  h.weight_decay = 0.05;
  h.step = step;
  if (kind == OptimizerKind::Lion) h.beta2 = 0.99;
  if (kind == OptimizerKind::Adagrad) h.lr_decay = 0.01;
  return h;
}

const OptimizerKind kKinds[] = {OptimizerKind::Adam, OptimizerKind::AdamW, OptimizerKind::Adagrad,
                                OptimizerKind::Lion};

}  // namespace

TEST(ThreadPool, RunsEveryTaskExactlyOnceOnTheRequestedNumberOfThreads) {
  for (int threads : {1, 2, 3}) {
    ThreadPool pool(threads);
    EXPECT_EQ(pool.threads(), threads);
    for (int64_t tasks : {0, 1, 2, 7, 1000}) {
      std::vector<std::atomic<int>> hits(tasks);
      std::mutex m;
      std::set<std::thread::id> ids;
      std::set<int> slots;
      pool.run(tasks, [&](int64_t t, int slot) {
        hits[t].fetch_add(1);
        std::lock_guard<std::mutex> lock(m);
        ids.insert(std::this_thread::get_id());
        slots.insert(slot);
      });
      for (int64_t t = 0; t < tasks; ++t) EXPECT_EQ(hits[t].load(), 1) << "task " << t;
      EXPECT_LE(static_cast<int>(ids.size()), threads);
      for (int s : slots) EXPECT_TRUE(s >= 0 && s < threads) << s;
    }
  }
}

TEST(ThreadPool, OneThreadMeansTheCallingThreadOnly) {
  ThreadPool pool(1);
  const auto me = std::this_thread::get_id();
  pool.run(64, [&](int64_t, int slot) {
    EXPECT_EQ(std::this_thread::get_id(), me);
    EXPECT_EQ(slot, 0);
  });
}

TEST(ThreadPool, RethrowsTheFirstErrorAndStaysUsable) {
  ThreadPool pool(2);
  EXPECT_ERROR_HAS(pool.run(100, [](int64_t t, int) { DS_CHECK(t != 37, "task ", t, " failed"); }),
                   "task 37 failed");
  std::atomic<int64_t> sum{0};
  pool.run(10, [&](int64_t t, int) { sum += t; });
  EXPECT_EQ(sum.load(), 45);
  EXPECT_ERROR_HAS(ThreadPool(0), "threads must be >= 1, got 0");
}

TEST(SimdTargets, ListsSupportedTargetsBestFirstWithScalarLast) {
  const auto targets = available_simd_targets();
  ASSERT_FALSE(targets.empty());
  for (size_t i = 1; i < targets.size(); ++i) EXPECT_LT(targets[i - 1].bit, targets[i].bit);
  EXPECT_TRUE(targets.back().name == "SCALAR" || targets.back().name == "EMU128") << targets.back().name;
  EXPECT_EQ(best_simd_target().bit, targets.front().bit) << best_simd_target().name;
  EXPECT_EQ(simd_target_by_name("scalar").bit, targets.back().bit);
  EXPECT_ERROR_HAS(simd_target_by_name("NEON"),
                   "SIMD target 'NEON' is not available on this CPU; available: ");
#if defined(__x86_64__)
  EXPECT_GE(targets.size(), 3u);  // at least SSSE3, SSE4 and scalar on any x86-64 that runs this
#endif
  std::string all;
  for (const auto& t : targets) all += t.name + " ";
  std::printf("SIMD targets here: %s(dispatch picks %s)\n", all.c_str(), best_simd_target().name.c_str());
}

// Every target must agree with the scalar target up to rounding, for every optimizer, every
// gradient type, with and without the working copy, at a length with a partial vector.
TEST(Kernels, EveryTargetAgreesWithScalar) {
  const auto targets = available_simd_targets();
  const int64_t scalar = targets.back().bit;
  const int64_t n = 3 * kTileElements + 29;
  for (OptimizerKind kind : kKinds) {
    for (ElemType g : {ElemType::F32, ElemType::BF16, ElemType::F16}) {
      Problem ref(n);
      std::vector<uint16_t> g16(n);
      for (int64_t i = 0; i < n; ++i)
        g16[i] = static_cast<uint16_t>(0x3C00 + (i * 7919) % 0x0800);  // finite in both
      auto run = [&](Problem& p, int64_t target) {
        FlatBuffers b = p.buffers(kind, true);
        b.half_type = ElemType::BF16;
        b.grad_type = g;
        if (g != ElemType::F32) b.grad = g16.data();
        optimizer_step(hyper(kind), b, nullptr, target);
      };
      run(ref, scalar);
      for (const auto& t : targets) {
        Problem p(n);
        run(p, t.bit);
        const std::string where = std::string(to_string(kind)) + " grad " + to_string(g) + " on " + t.name;
        EXPECT_LT(rel_error(p.param, ref.param), 1e-6) << where;
        EXPECT_LT(rel_error(p.s0, ref.s0), 1e-6) << where;
        EXPECT_LT(rel_error(p.s1, ref.s1), 1e-6) << where;
      }
    }
  }
}

TEST(Kernels, ThreadCountAndTilingDoNotChangeResults) {
  for (OptimizerKind kind : kKinds) {
    for (int64_t n : {int64_t{1}, int64_t{17}, kTileElements, kTileElements + 1, 5 * kTileElements + 3}) {
      Problem one(n), two(n), three(n);
      optimizer_step(hyper(kind), one.buffers(kind, true), nullptr);
      ThreadPool p2(2), p3(3);
      optimizer_step(hyper(kind), two.buffers(kind, true), &p2);
      optimizer_step(hyper(kind), three.buffers(kind, true), &p3);
      EXPECT_TRUE(one == two) << to_string(kind) << " n=" << n;
      EXPECT_TRUE(one == three) << to_string(kind) << " n=" << n;
    }
  }
}

TEST(Kernels, TailElementsAreUpdatedAndNothingBeyondIsTouched) {
  // Every length up to two full AVX-512 vectors, inside a guarded buffer.
  for (const auto& t : available_simd_targets()) {
    for (int64_t n = 0; n <= 33; ++n) {
      const float guard = 12345.0f;
      std::vector<float> param(n + 16, guard), grad(n + 16, 0.5f), m(n + 16, guard), v(n + 16, guard);
      std::vector<uint16_t> half(n + 16, 0xABCD);
      for (int64_t i = 0; i < n; ++i) param[i] = 1.0f, m[i] = 0.0f, v[i] = 0.0f;
      FlatBuffers b;
      b.n = n;
      b.param = param.data();
      b.grad = grad.data();
      b.state0 = m.data();
      b.state1 = v.data();
      b.half_copy = half.data();
      optimizer_step(hyper(OptimizerKind::Adam, 1), b, nullptr, t.bit);
      for (int64_t i = 0; i < n; ++i) {
        EXPECT_LT(param[i], 1.0f) << t.name << " n=" << n << " i=" << i;
        EXPECT_NE(half[i], 0xABCD) << t.name << " n=" << n << " i=" << i;
      }
      for (int64_t i = n; i < n + 16; ++i) {
        EXPECT_EQ(param[i], guard) << t.name << " n=" << n << " i=" << i;
        EXPECT_EQ(m[i], guard);
        EXPECT_EQ(v[i], guard);
        EXPECT_EQ(half[i], 0xABCD);
      }
    }
  }
}

TEST(Kernels, UnalignedBuffersWork) {
  // Offsets of one element: no buffer is vector-aligned; results equal the aligned run.
  const int64_t n = 1001;
  Problem aligned(n + 1), shifted(n + 1);
  FlatBuffers a = aligned.buffers(OptimizerKind::AdamW, true),
              s = shifted.buffers(OptimizerKind::AdamW, true);
  for (FlatBuffers* b : {&a, &s}) {
    b->n = n;
    b->param += 1;
    b->grad = static_cast<const float*>(b->grad) + 1;
    b->state0 += 1;
    b->state1 += 1;
    b->half_copy = static_cast<uint16_t*>(b->half_copy) + 1;
  }
  optimizer_step(hyper(OptimizerKind::AdamW), a, nullptr, available_simd_targets().back().bit);
  optimizer_step(hyper(OptimizerKind::AdamW), s, nullptr);
  for (int64_t i = 1; i <= n; ++i)
    EXPECT_NEAR(aligned.param[i], shifted.param[i], 1e-6 * std::abs(aligned.param[i]));
}

TEST(Kernels, BadArgumentsNameTheOffendingValue) {
  Problem p(64);
  auto adam = [&] { return p.buffers(OptimizerKind::Adam, false); };
  FlatBuffers b = adam();
  OptimizerHyper h = hyper(OptimizerKind::Adam);

  b.param = nullptr;
  EXPECT_ERROR_HAS(optimizer_step(h, b, nullptr), "param is null");
  b = adam();
  b.state1 = nullptr;
  EXPECT_ERROR_HAS(optimizer_step(h, b, nullptr), "exp_avg_sq (state1) is null");
  b = adam();
  b.state1 = b.state0 + 10;
  EXPECT_ERROR_HAS(optimizer_step(h, b, nullptr), "state0 [");
  EXPECT_ERROR_HAS(optimizer_step(h, b, nullptr), "overlaps state1");
  b = adam();
  b.param = reinterpret_cast<float*>(reinterpret_cast<char*>(p.param.data()) + 1);
  b.n = 10;
  EXPECT_ERROR_HAS(optimizer_step(h, b, nullptr), "is not aligned to its element size (4 bytes)");
  b = adam();
  b.n = -1;
  EXPECT_ERROR_HAS(optimizer_step(h, b, nullptr), "negative element count -1");
  b = p.buffers(OptimizerKind::Lion, false);
  b.state1 = p.s1.data();
  EXPECT_ERROR_HAS(optimizer_step(hyper(OptimizerKind::Lion), b, nullptr), "Lion has one state buffer");
  b = adam();
  b.half_copy = p.half.data();
  b.half_type = ElemType::F32;
  EXPECT_ERROR_HAS(optimizer_step(h, b, nullptr), "must be bfloat16 or float16, got float32");

  b = adam();
  OptimizerHyper bad = h;
  bad.step = 0;
  EXPECT_ERROR_HAS(optimizer_step(bad, b, nullptr), "step is 1-based and must be >= 1, got 0");
  bad = h;
  bad.beta2 = 1.0;
  EXPECT_ERROR_HAS(optimizer_step(bad, b, nullptr), "beta2 must be in [0, 1), got 1");
  bad = h;
  bad.lr = -0.5;
  EXPECT_ERROR_HAS(optimizer_step(bad, b, nullptr), "lr must be finite and >= 0, got -0.5");
  bad = h;
  bad.lr = NAN;
  EXPECT_ERROR_HAS(optimizer_step(bad, b, nullptr), "lr must be finite");
  bad = hyper(OptimizerKind::Adagrad);
  bad.lr_decay = -1;
  EXPECT_ERROR_HAS(optimizer_step(bad, p.buffers(OptimizerKind::Adagrad, false), nullptr),
                   "lr_decay must be finite and >= 0, got -1");
  EXPECT_ERROR_HAS(optimizer_step(h, adam(), nullptr, int64_t{1} << 40),
                   "no kernels were compiled for SIMD target");

  // Zero elements: nothing to check but the hyper-parameters; null data is fine.
  FlatBuffers empty;
  EXPECT_NO_THROW(optimizer_step(h, empty, nullptr));
}
