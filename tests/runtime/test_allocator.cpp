// The caching CPU allocator (ds/runtime/allocator.h). Each test runs in its own process
// (ctest runs one GoogleTest case per process), so installing it here affects only this test.
#include <ATen/ATen.h>
#include <c10/core/CPUAllocator.h>
#include <gtest/gtest.h>
#include <stdlib.h>

#include "ds/common/error.h"
#include "ds/runtime/allocator.h"

namespace ds {
namespace {

constexpr int64_t kMiB = int64_t(1) << 20;

at::Tensor bytes_tensor(int64_t bytes) { return at::empty({bytes}, at::kByte); }

TEST(CachingAllocator, AFreedLargeBlockIsReusedForTheSameSizeAndSmallOnesPassThrough) {
  ::unsetenv("DS_ALLOCATOR");
  const std::string line = install_caching_allocator(64 * kMiB);
  EXPECT_NE(line.find("caching"), std::string::npos) << line;
  ASSERT_TRUE(caching_allocator_installed());
  void* first = nullptr;
  {
    at::Tensor t = bytes_tensor(4 * kMiB);
    first = t.data_ptr();
    EXPECT_EQ(reinterpret_cast<uintptr_t>(first) % 64, 0u);
  }
  EXPECT_EQ(caching_allocator_stats().cached_bytes, 4 * kMiB);
  {
    // Another size in the same class (sizes round up to 1/16 of their power of two).
    at::Tensor t = bytes_tensor(4 * kMiB - 1000);
    EXPECT_EQ(t.data_ptr(), first);
  }
  const CachingAllocatorStats s = caching_allocator_stats();
  EXPECT_EQ(s.hits, 1);
  EXPECT_EQ(s.misses, 1);
  { at::Tensor small = bytes_tensor(1000), empty = bytes_tensor(0); }
  EXPECT_EQ(caching_allocator_stats().hits + caching_allocator_stats().misses, 2) << "small blocks are not cached";
  EXPECT_EQ(install_caching_allocator(), line) << "a second install changes nothing";
}

// c10's raw_allocate/raw_deallocate (used inside ops such as GELU for scratch space) need the
// data pointer to be the deleter's context and a raw deleter.
TEST(CachingAllocator, RawAllocationsAndOpsThatUseThemWork) {
  const at::Tensor x = at::randn({512, 1024});
  const at::Tensor before = at::gelu(x);
  ::unsetenv("DS_ALLOCATOR");
  install_caching_allocator(64 * kMiB);
  c10::Allocator* a = c10::GetCPUAllocator();
  for (size_t bytes : {size_t(0), size_t(100), size_t(3 * kMiB)}) {
    void* p = a->raw_allocate(bytes);
    if (bytes) std::memset(p, 1, bytes);
    a->raw_deallocate(p);
  }
  EXPECT_TRUE(at::equal(at::gelu(x), before));
  EXPECT_TRUE(at::equal(at::matmul(x, x.t()), at::matmul(x.clone(), x.t().clone())));
}

TEST(CachingAllocator, CachedPlusLiveNeverExceedsThePeakOrTheLimit) {
  ::unsetenv("DS_ALLOCATOR");
  install_caching_allocator(10 * kMiB);
  { at::Tensor a = bytes_tensor(3 * kMiB), b = bytes_tensor(3 * kMiB), c = bytes_tensor(3 * kMiB), d = bytes_tensor(3 * kMiB); }
  CachingAllocatorStats s = caching_allocator_stats();
  EXPECT_EQ(s.peak_live_bytes, 12 * kMiB);
  EXPECT_EQ(s.live_bytes, 0);
  EXPECT_EQ(s.cached_bytes, 9 * kMiB) << "the limit keeps three of the four blocks";
  EXPECT_EQ(s.released_bytes, 3 * kMiB);
  {
    // A size nothing cached fits: cached blocks go back until cached + live fits under the
    // peak of 12 MiB (one 3 MiB block), not more.
    at::Tensor big = bytes_tensor(5 * kMiB);
    s = caching_allocator_stats();
    EXPECT_EQ(s.cached_bytes, 6 * kMiB);
    EXPECT_LE(s.cached_bytes + s.live_bytes, s.peak_live_bytes);
    // The cached blocks serve their size again.
    at::Tensor again = bytes_tensor(3 * kMiB);
    EXPECT_EQ(caching_allocator_stats().hits, 1);
  }
  // A block larger than the whole cache is never kept.
  { at::Tensor huge = bytes_tensor(12 * kMiB); }
  EXPECT_LE(caching_allocator_stats().cached_bytes, 10 * kMiB);
  // A training-like loop: the same sizes every step are served from the cache after the first.
  const CachingAllocatorStats before = caching_allocator_stats();
  for (int step = 0; step < 5; ++step) {
    at::Tensor x = bytes_tensor(2 * kMiB), y = bytes_tensor(3 * kMiB);
  }
  const CachingAllocatorStats after = caching_allocator_stats();
  EXPECT_LE(after.misses - before.misses, 2);
  EXPECT_GE(after.hits - before.hits, 8);
}

TEST(CachingAllocator, TheEnvironmentTurnsItOffOrIsRefusedWhenMisspelt) {
  ::setenv("DS_ALLOCATOR", "jemalloc", 1);
  EXPECT_THROW(install_caching_allocator(), ConfigError);
  ::setenv("DS_ALLOCATOR", "system", 1);
  const std::string line = install_caching_allocator();
  EXPECT_NE(line.find("LibTorch's own"), std::string::npos) << line;
  EXPECT_FALSE(caching_allocator_installed());
  ::unsetenv("DS_ALLOCATOR");
}

TEST(CachingAllocator, AMalformedCacheSizeIsRefused) {
  ::unsetenv("DS_ALLOCATOR");
  ::setenv("DS_ALLOCATOR_CACHE_MB", "lots", 1);
  try {
    install_caching_allocator();
    FAIL() << "accepted DS_ALLOCATOR_CACHE_MB=lots";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("DS_ALLOCATOR_CACHE_MB"), std::string::npos) << e.what();
  }
  ::unsetenv("DS_ALLOCATOR_CACHE_MB");
}

}  // namespace
}  // namespace ds
