// Run under mpirun: the 1-bit compressed all-reduce on the MPI backend equals its closed form.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "ds/comm/communicator.h"
#include "support/mpi_world.h"
#include "ds/compress/onebit.h"
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
