// OpenMP's wait policy for the tools: libgomp's idle threads spin by default, which on a
// small machine starves OpenBLAS's threads and the optimizer's thread pool (a 124M-parameter
// step on 2 cores: 4.8 s spinning vs 2.0 s passive). libgomp reads OMP_WAIT_POLICY when it
// loads, before main() runs, so a program started without it re-executes itself once with
// OMP_WAIT_POLICY=PASSIVE (same pid, same arguments). ds-launch sets it for its ranks.
//
//   int main(int argc, char** argv) { ds::ensure_passive_openmp(argv); ... }
#pragma once

namespace ds {

// Returns when OMP_WAIT_POLICY is set (by the user or after the re-exec); otherwise sets it to
// PASSIVE and execs /proc/self/exe with `argv`. If the exec fails, carries on (slower).
void ensure_passive_openmp(char** argv);

}  // namespace ds
