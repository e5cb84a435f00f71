// main() of the tests run under mpirun (ds_mpi_test): the world from the environment
// (DS_COMM_BACKEND=mpi), released before MPI finalizes.
#include <gtest/gtest.h>

#include "support/mpi_world.h"

namespace ds::test {
namespace {
std::shared_ptr<comm::Communicator> the_world;
}
const std::shared_ptr<comm::Communicator>& mpi_world() { return the_world; }
}  // namespace ds::test

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  ds::test::the_world = ds::comm::init_from_env();
  int rc = RUN_ALL_TESTS();
  ds::test::the_world.reset();
  return rc;
}
