// Closed-form checks of every collective, shared by the Gloo tests (forked ranks) and the
// MPI test (run under mpirun). Each uses GoogleTest assertions.
#pragma once

#include <ATen/core/Tensor.h>

#include <vector>

#include "ds/comm/communicator.h"

namespace ds::test {

// Buffer sizes swept by every collective: empty, one element, non-divisible, multi-segment.
std::vector<int64_t> sweep_sizes(int world);
std::vector<at::ScalarType> sweep_dtypes();

void check_all_reduce(comm::Communicator& c, at::ScalarType dtype, int64_t n);
void check_reduce_scatter(comm::Communicator& c, at::ScalarType dtype, int64_t n);
void check_all_gather(comm::Communicator& c, at::ScalarType dtype, int64_t n);
void check_broadcast(comm::Communicator& c, at::ScalarType dtype, int64_t n);
void check_all_to_all(comm::Communicator& c, at::ScalarType dtype);
void check_send_recv(comm::Communicator& c, at::ScalarType dtype, int64_t n);
// Bytes in the comms logger equal the ring algorithm's volume for reduce-scatter, all-gather
// and all-reduce.
void check_logged_volume(comm::Communicator& c, int64_t n);
// Everything above, over sweep_sizes x sweep_dtypes.
void check_everything(comm::Communicator& c);

}  // namespace ds::test
