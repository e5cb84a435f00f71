// ZeRO++'s int8 blocks: the codes and scales equal a plain LibTorch reference (amax per group,
// round half away from zero) for every length around the group size, fp32 and bf16; overflow
// decodes to NaN; and the quantized all-gather and reduce-scatter give, on 1-4 ranks, exactly
// what quantizing each rank's contribution once gives, at about a quarter of fp32's bytes.
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <cmath>
#include <limits>

#include "ds/comm/communicator.h"
#include "ds/compress/quantize.h"
#include "support/errors.h"
#include "support/ranks.h"

namespace ds::compress {
namespace {

struct Reference {
  at::Tensor codes;   // int8 [n]
  at::Tensor scales;  // fp32 [groups]
  at::Tensor values;  // fp32 [n]: codes * scale
};

// The format written in tensors: pad to whole groups, amax per row, codes = sign * floor(|x| / s + 1/2).
Reference reference(const at::Tensor& x, int64_t group) {
  const int64_t n = x.numel(), groups = (n + group - 1) / group;
  at::Tensor padded = at::zeros({groups * group});
  padded.slice(0, 0, n).copy_(x.to(at::kFloat));
  at::Tensor rows = padded.view({groups, group});
  at::Tensor scales = rows.abs().amax(1) / 127.0f;
  at::Tensor safe = at::where(scales > 0, scales, at::ones_like(scales)).unsqueeze(1);
  at::Tensor codes = (at::sign(rows) * at::floor(rows.abs() / safe + 0.5)).clamp(-127, 127);
  at::Tensor values = (codes * scales.unsqueeze(1)).view({-1}).slice(0, 0, n);
  return {codes.view({-1}).slice(0, 0, n).to(at::kChar), scales, values};
}

at::Tensor packed_for(int64_t n, int64_t group) {
  return at::full({Int8Blocks{n, group}.bytes()}, 0xAB, at::TensorOptions().dtype(at::kByte));
}

TEST(Quantize, Int8BlocksEqualAPlainLibTorchReference) {
  for (at::ScalarType dtype : {at::kFloat, at::kBFloat16}) {
    for (int64_t group : {int64_t(7), kZeroPlusPlusGroup}) {
      for (int64_t n : {int64_t(1), int64_t(5), group - 1, group, group + 1, 3 * group + 2}) {
        at::manual_seed(n + group);
        at::Tensor x = (at::randn({n}) * at::linspace(0.01, 3.0, n)).to(dtype);
        const Int8Blocks b{n, group};
        at::Tensor packed = packed_for(n, group);
        quantize_int8(x, group, packed);
        const Reference want = reference(x, group);
        const std::string what = ds::str(n, " values, group ", group, ", ", dtype);
        EXPECT_TRUE(at::equal(packed.slice(0, 0, n).view(at::kChar), want.codes)) << what;
        EXPECT_TRUE(at::equal(packed.slice(0, n, b.scales_offset()), at::zeros({b.scales_offset() - n}, at::kByte)))
            << what << ": the padding is zero";
        EXPECT_TRUE(at::allclose(packed.slice(0, b.scales_offset()).view(at::kFloat), want.scales, 1e-6, 0)) << what;
        at::Tensor out = at::empty({n}, dtype);
        dequantize_int8(packed, group, out);
        EXPECT_TRUE(at::allclose(out.to(at::kFloat), want.values.to(dtype).to(at::kFloat), 1e-6, 0)) << what;
        // Every value within half a step of its group (and bf16's own rounding of the result).
        at::Tensor step = want.scales.repeat_interleave(group).slice(0, 0, n);
        const at::Tensor xf = x.to(at::kFloat);
        const double ulp = dtype == at::kFloat ? 0.0 : 1.0 / 256;
        EXPECT_TRUE(((out.to(at::kFloat) - xf).abs() <= step * 0.5001 + xf.abs() * ulp).all().item<bool>()) << what;
      }
    }
  }
}

TEST(Quantize, OverflowDecodesToNaNZerosToZerosAndAccumulatesInFp32) {
  const int64_t group = 4;
  at::Tensor x = at::tensor({1.0f, std::numeric_limits<float>::infinity(), 2.0f, 3.0f,  // a group with inf
                             0.0f, 0.0f, 0.0f, 0.0f,                                    // zeros
                             -0.5f, 0.25f, std::nanf(""), 1.0f,                         // a group with NaN
                             4.0f, -2.0f});
  at::Tensor packed = packed_for(x.numel(), group);
  quantize_int8(x, group, packed);
  at::Tensor out = at::empty({x.numel()});
  dequantize_int8(packed, group, out);
  EXPECT_TRUE(out.slice(0, 0, 4).isnan().all().item<bool>());
  EXPECT_TRUE(out.slice(0, 4, 8).eq(0).all().item<bool>());
  EXPECT_TRUE(out.slice(0, 8, 12).isnan().all().item<bool>());
  EXPECT_TRUE(at::allclose(out.slice(0, 12), at::tensor({4.0f, -2.0f}), 0, 4.0 / 127));
  // out += alpha * values, in fp32.
  at::Tensor acc = at::ones({x.numel()});
  dequantize_int8(packed, group, acc, /*accumulate=*/true, 0.5f);
  EXPECT_TRUE(at::allclose(acc.slice(0, 12), 1 + 0.5 * at::tensor({4.0f, -2.0f}), 0, 2.0 / 127));
  EXPECT_ERROR_HAS(dequantize_int8(packed, group, at::empty({x.numel()}, at::kBFloat16), true), "fp32 only");
  EXPECT_ERROR_HAS(quantize_int8(x, group, at::empty({3}, at::kByte)), "take");
}

TEST(Quantize, AllGatherOnOneToFourRanksIsEveryShardQuantizedOnce) {
  for (int W : {1, 2, 3, 4}) {
    for (at::ScalarType dtype : {at::kFloat, at::kBFloat16}) {
      const int64_t shard = 3001;  // groups of 2048 and a partial one per shard
      test::run_ranks(W, [&](comm::Communicator& world) {
        auto of_rank = [&](int r) {
          at::manual_seed(100 + r);
          return (at::randn({shard}) * (r + 1)).to(dtype);
        };
        at::Tensor wire;
        quantized_all_gather(world, of_rank(world.rank()), kZeroPlusPlusGroup, wire).wait();
        const int64_t bytes = Int8Blocks{shard, kZeroPlusPlusGroup}.bytes();
        EXPECT_EQ(wire.numel(), W * bytes);
        at::Tensor out = at::empty({W * shard}, dtype);
        dequantize_gathered(wire, W, kZeroPlusPlusGroup, out);
        for (int r = 0; r < W; ++r) {
          const at::Tensor want = reference(of_rank(r), kZeroPlusPlusGroup).values.to(dtype);
          EXPECT_TRUE(at::allclose(out.slice(0, r * shard, (r + 1) * shard).to(at::kFloat), want.to(at::kFloat), 1e-6, 0))
              << W << " ranks, shard of rank " << r << ", " << dtype << ": "
              << (out.slice(0, r * shard, (r + 1) * shard).to(at::kFloat) - want.to(at::kFloat)).abs().max().item<float>()
              << " at " << (out.slice(0, r * shard, (r + 1) * shard).to(at::kFloat) - want.to(at::kFloat)).abs().argmax().item<int64_t>();
        }
      });
    }
  }
}

TEST(Quantize, ReduceScatterSumsEachRanksQuantizedChunkAtAQuarterOfTheBytes) {
  for (int W : {1, 2, 3, 4}) {
    const int64_t n = 20003;  // chunks of unequal length
    test::run_ranks(W, [&](comm::Communicator& world) {
      auto input_of = [&](int r) {
        at::manual_seed(7 + r);
        return at::randn({n}) * (0.5 + r);
      };
      world.logger().set_enabled(true);
      world.logger().reset();
      QuantizedReduceScatter rs(world, input_of(world.rank()), kZeroPlusPlusGroup);
      const comm::Chunk mine = comm::chunk_of(n, W, world.rank());
      at::Tensor out = at::full({mine.length}, 1.0f);
      rs.finish(out, 0.25f);
      at::Tensor want = at::ones({mine.length});
      for (int r = 0; r < W; ++r)
        want += 0.25 * reference(input_of(r).slice(0, mine.offset, mine.offset + mine.length), kZeroPlusPlusGroup).values;
      EXPECT_TRUE(at::allclose(out, want, 1e-5, 1e-6)) << W << " ranks, rank " << world.rank();
      if (W > 1) {
        const double sent = double(world.logger().sent_bytes());
        EXPECT_LT(sent, 0.27 * 4.0 * double(n)) << "bytes of an fp32 buffer: " << 4 * n;
        EXPECT_GT(sent, 0.24 * 4.0 * double(n) * (W - 1) / W);
      }
    });
  }
}

}  // namespace
}  // namespace ds::compress
