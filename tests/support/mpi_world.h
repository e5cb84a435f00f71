// The world of a test run under mpirun (see ds_mpi_test in tests/CMakeLists.txt).
#pragma once

#include <memory>

#include "ds/comm/communicator.h"

namespace ds::test {

const std::shared_ptr<comm::Communicator>& mpi_world();

}  // namespace ds::test
