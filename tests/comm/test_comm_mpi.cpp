// Run under mpirun: the closed-form collective checks with the MPI backend.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "collective_checks.h"
#include "ds/comm/communicator.h"
#include "ds/comm/topology.h"
#include "support/mpi_world.h"

namespace {
const std::shared_ptr<ds::comm::Communicator>& world = ds::test::mpi_world();
}

TEST(MpiCollectives, MatchClosedFormForAllSizesAndDtypes) {
  ASSERT_EQ(world->backend(), "mpi");
  ds::test::check_everything(*world);
}

TEST(MpiCollectives, SubGroupsWork) {
  if (world->size() < 2) GTEST_SKIP() << "needs 2 ranks";
  auto t = ds::comm::Topology::for_world(world->size(), 1, world->size() % 2 == 0 ? 2 : 1);
  auto g = ds::comm::ParallelGroups::create(world, t);
  at::Tensor x = at::ones({3});
  g.data->all_reduce(x).wait();
  EXPECT_TRUE(at::all(x == float(t.size(ds::comm::Axis::Data))).item<bool>());
}
