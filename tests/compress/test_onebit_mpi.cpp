// Run under mpirun: the 1-bit compressed all-reduce on the MPI backend equals its closed form;
// ZeRO++'s quantized all-gather and reduce-scatter carry each rank's int8 blocks once.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "ds/comm/communicator.h"
#include "support/mpi_world.h"
#include "ds/compress/onebit.h"
#include "ds/compress/quantize.h"
#include "onebit_reference.h"

namespace {
const std::shared_ptr<ds::comm::Communicator>& world = ds::test::mpi_world();
}

TEST(MpiOneBit, CompressedAllReduceIsTheClosedForm) {
  ASSERT_EQ(world->backend(), "mpi");
  for (int64_t n : {int64_t(1), int64_t(37), int64_t(1000)}) {
    const auto want = ds::compress::closed_form(world->size(), n, 3);
    ds::compress::OneBitAllReduce ar(n, world);
    for (int t = 0; t < 3; ++t) {
      at::Tensor x = ds::compress::input(world->rank(), t, n);
      ar.all_reduce(x);
      EXPECT_LT((x - want[size_t(t)]).abs().max().item<double>(), 1e-5)
          << world->size() << " ranks, " << n << " elements, call " << t << ", rank " << world->rank();
    }
  }
}

// ZeRO++'s quantized collectives on the MPI backend (uint8 all-gather, all-to-all with
// uneven splits): each rank's contribution quantized once, as the kernels quantize it alone.
TEST(MpiQuantize, AllGatherAndReduceScatterCarryEachRanksInt8BlocksOnce) {
  ASSERT_EQ(world->backend(), "mpi");
  const int W = world->size();
  auto input_of = [](int r, int64_t n) {
    at::manual_seed(31 + r);
    return at::randn({n}) * (1.0 + r);
  };
  auto roundtrip = [](const at::Tensor& x) {  // what one rank's blocks decode to
    at::Tensor packed = at::empty({ds::compress::Int8Blocks{x.numel(), ds::compress::kZeroPlusPlusGroup}.bytes()}, at::kByte);
    ds::compress::quantize_int8(x, ds::compress::kZeroPlusPlusGroup, packed);
    at::Tensor out = at::empty({x.numel()});
    ds::compress::dequantize_int8(packed, ds::compress::kZeroPlusPlusGroup, out);
    return out;
  };
  const int64_t shard = 3001, n = 20003;
  at::Tensor wire;
  ds::compress::quantized_all_gather(*world, input_of(world->rank(), shard), ds::compress::kZeroPlusPlusGroup, wire).wait();
  at::Tensor gathered = at::empty({W * shard});
  ds::compress::dequantize_gathered(wire, W, ds::compress::kZeroPlusPlusGroup, gathered);
  for (int r = 0; r < W; ++r)
    EXPECT_TRUE(gathered.slice(0, r * shard, (r + 1) * shard).equal(roundtrip(input_of(r, shard)))) << "shard of rank " << r;
  ds::compress::QuantizedReduceScatter rs(*world, input_of(world->rank(), n), ds::compress::kZeroPlusPlusGroup);
  const ds::comm::Chunk mine = ds::comm::chunk_of(n, W, world->rank());
  at::Tensor out = at::zeros({mine.length});
  rs.finish(out, 1.0f / float(W));
  at::Tensor want = at::zeros({mine.length});
  for (int r = 0; r < W; ++r) want += roundtrip(input_of(r, n).slice(0, mine.offset, mine.offset + mine.length)) / W;
  EXPECT_TRUE(at::allclose(out, want, 1e-5, 1e-6)) << "rank " << world->rank();
}
