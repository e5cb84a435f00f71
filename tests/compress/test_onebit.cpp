// The 1-bit compressed all-reduce: sign packing round-trips, the result equals the algorithm's
// closed form computed over all ranks at once in plain LibTorch (three calls, so the error
// feedback is exercised), the residual invariant holds, and the bytes sent are a small
// fraction of an fp32 all-reduce's.
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <cmath>

#include "ds/comm/communicator.h"
#include "ds/compress/onebit.h"
#include "onebit_reference.h"
#include "support/ranks.h"

namespace ds::compress {
namespace {

TEST(OneBit, SignsPackEightPerByteAndRoundTripForEveryLength) {
  for (int64_t n = 1; n <= 70; ++n) {
    at::Tensor x = at::sin(at::arange(n, at::kFloat) * 1.7) ;
    x[0] = 0.0f;  // zero counts as positive (DeepSpeed's sign + 1)
    at::Tensor packed = pack_signs(x);
    ASSERT_EQ(packed.numel(), (n + 7) / 8) << n;
    ASSERT_EQ(packed.scalar_type(), at::kByte);
    at::Tensor back = unpack_signs(packed, n);
    EXPECT_TRUE(back.equal(at::where(x >= 0, 1.0f, -1.0f))) << n;
  }
  EXPECT_EQ(pack_signs(at::tensor({1.0f, -1.0f, -1.0f, 1.0f})).item<int>(), 0b1001);
}

TEST(OneBit, CompressedAllReduceIsTheClosedFormOnOneToFourRanks) {
  for (int W : {1, 2, 3, 4}) {
    for (int64_t n : {int64_t(1), int64_t(37), int64_t(64), int64_t(1000)}) {
      const auto want = closed_form(W, n, 3);
      test::run_ranks(W, [&](comm::Communicator& world) {
        OneBitAllReduce ar(n, world.shared_from_this());
        for (int t = 0; t < 3; ++t) {
          at::Tensor x = input(world.rank(), t, n);
          const at::Tensor v = x + ar.worker_error();
          ar.all_reduce(x);
          EXPECT_LT((x - want[size_t(t)]).abs().max().item<double>(), 1e-5)
              << W << " ranks, " << n << " elements, call " << t << ", rank " << world.rank();
          // What compression dropped is exactly what the error feedback now holds: v - e is
          // one scale times the signs of v (the scale is 0 for an all-zero input).
          at::Tensor kept = v - ar.worker_error();
          const at::Tensor expect = at::where(v >= 0, 1.0f, -1.0f) * kept.abs().max();
          EXPECT_LT((kept - expect).abs().max().item<double>(), 1e-5) << "residual, call " << t << ", rank " << world.rank();
        }
      });
    }
  }
}

TEST(OneBit, SendsAFractionOfAnFp32AllReducesBytes) {
  test::run_ranks(4, [](comm::Communicator& world) {
    const int64_t n = int64_t(1) << 16;
    at::Tensor x = input(world.rank(), 0, n);
    world.logger().set_enabled(true);
    world.logger().reset();
    world.all_reduce(x).wait();
    const int64_t fp32 = world.logger().sent_bytes();
    world.logger().reset();
    OneBitAllReduce ar(n, world.shared_from_this());
    ar.all_reduce(x);
    const int64_t onebit = world.logger().sent_bytes();
    EXPECT_LE(onebit * 16, fp32) << "1-bit " << onebit << " B vs fp32 " << fp32 << " B";
    if (world.rank() == 0) std::printf("bytes sent per rank: fp32 all-reduce %lld, 1-bit %lld (1/%.1f)\n",
                                       (long long)fp32, (long long)onebit, double(fp32) / double(onebit));
  });
}

}  // namespace
}  // namespace ds::compress
