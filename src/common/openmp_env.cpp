#include "ds/common/openmp_env.h"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>

namespace ds {

void ensure_passive_openmp(char** argv) {
  if (std::getenv("OMP_WAIT_POLICY")) return;
  ::setenv("OMP_WAIT_POLICY", "PASSIVE", 1);
  ::execv("/proc/self/exe", argv);
  std::fprintf(stderr, "warning: could not re-execute with OMP_WAIT_POLICY=PASSIVE; set it yourself for speed\n");
}

}  // namespace ds
