// A caching CPU allocator for LibTorch (its allocator hook, c10::SetCPUAllocator).
//
// LibTorch's default CPU allocator is posix_memalign/free, and glibc serves blocks above its
// mmap threshold (at most 32 MiB) with mmap: every large activation or gradient buffer is
// unmapped when freed and faulted in again, zero-filled, on the next step. Training allocates
// the same sizes every step, so keeping freed large blocks for reuse removes that work
// (measured in docs/BENCHMARKS.md). Small blocks go to the default allocator as before.
//
// Bounded twice: at most `limit_bytes` of freed blocks are kept, and cached plus live blocks
// never exceed the most the program ever had live at once (a miss gives back least recently
// freed blocks first). A block is reused only for a request of its exact size class (sizes
// rounded up to 1/16 of a power of two), so what is kept is what the next step asks for again.
//
//   ds::install_caching_allocator();       // ds::Engine does it, unless DS_ALLOCATOR=system
#pragma once

#include <cstdint>
#include <string>

namespace ds {

struct CachingAllocatorStats {
  int64_t cached_bytes = 0;     // freed blocks kept now
  int64_t hits = 0, misses = 0;  // large allocations served from the cache / by the system
  int64_t released_bytes = 0;   // given back to the system (the cache was full, or over the peak)
  int64_t live_bytes = 0;       // large blocks in use now
  int64_t peak_live_bytes = 0;  // the most large blocks ever in use at once
};

// Installs the caching allocator as LibTorch's CPU allocator, once per process; later calls
// do nothing. DS_ALLOCATOR=system in the environment leaves LibTorch's own allocator in place.
// `limit_bytes` 0: a quarter of physical memory, at most 8 GiB (DS_ALLOCATOR_CACHE_MB overrides).
// Returns one line saying what is in place.
std::string install_caching_allocator(int64_t limit_bytes = 0);
bool caching_allocator_installed();
CachingAllocatorStats caching_allocator_stats();

}  // namespace ds
