// AlignedBuffer and BufferPool: alignment, moves, best-effort page locking, leases.
#include <chrono>
#include <cstdint>
#include <thread>

#include <gtest/gtest.h>

#include "ds/aio/buffer.h"
#include "support/errors.h"

namespace ds::aio {
namespace {

TEST(AlignedBuffer, IsAlignedSizedAndMovable) {
  AlignedBuffer a(10000);
  EXPECT_EQ(a.size(), 10000u);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(a.data()) % kDirectIoAlignment, 0u);
  a.bytes()[9999] = 1;
  void* p = a.data();
  AlignedBuffer b(std::move(a));
  EXPECT_EQ(b.data(), p);
  EXPECT_EQ(a.data(), nullptr);
  EXPECT_EQ(a.size(), 0u);
  AlignedBuffer c(512, 512);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(c.data()) % 512, 0u);
  c = std::move(b);
  EXPECT_EQ(c.data(), p);
}

TEST(AlignedBuffer, ZeroBytesHasNoStorage) {
  AlignedBuffer a(0);
  EXPECT_EQ(a.data(), nullptr);
  EXPECT_FALSE(a.lock_pages());
}

TEST(AlignedBuffer, AlignmentMustBeAPowerOfTwo) {
  EXPECT_ERROR_HAS(AlignedBuffer(4096, 3000), "power of two");
  EXPECT_ERROR_HAS(AlignedBuffer(4096, 2), "power of two");
}

TEST(AlignedBuffer, LockingIsBestEffortAndIdempotent) {
  AlignedBuffer a(1 << 16);
  const bool locked = a.lock_pages();
  EXPECT_EQ(a.locked(), locked);
  EXPECT_EQ(a.lock_pages(), locked);
}

TEST(BufferPool, LeasesAreAlignedAndReturnWhenDestroyed) {
  BufferPool pool(2, 1 << 20);
  EXPECT_EQ(pool.count(), 2u);
  EXPECT_EQ(pool.buffer_bytes(), 1u << 20);
  {
    BufferPool::Lease a = pool.acquire();
    BufferPool::Lease b = pool.acquire();
    EXPECT_NE(a.data(), b.data());
    EXPECT_NE(a.index(), b.index());
    EXPECT_EQ(reinterpret_cast<uintptr_t>(a.data()) % kDirectIoAlignment, 0u);
    EXPECT_EQ(a.size(), 1u << 20);
    EXPECT_EQ(pool.available(), 0u);
    EXPECT_FALSE(pool.try_acquire().has_value());
    b.release();
    EXPECT_FALSE(b.valid());
    EXPECT_EQ(pool.available(), 1u);
  }
  EXPECT_EQ(pool.available(), 2u);
}

TEST(BufferPool, AcquireBlocksUntilALeaseIsReturned) {
  BufferPool pool(1, 4096, {kDirectIoAlignment, false});
  EXPECT_EQ(pool.locked_count(), 0u);
  auto held = std::make_unique<BufferPool::Lease>(pool.acquire());
  std::thread returner([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    held.reset();
  });
  const auto start = std::chrono::steady_clock::now();
  BufferPool::Lease again = pool.acquire();
  EXPECT_GE(std::chrono::steady_clock::now() - start, std::chrono::milliseconds(40));
  EXPECT_TRUE(again.valid());
  returner.join();
}

TEST(BufferPool, ALeaseMayOutliveThePool) {
  BufferPool::Lease lease;
  {
    BufferPool pool(1, 4096);
    lease = pool.acquire();
  }
  lease.bytes()[0] = 1;  // storage still alive
  lease.release();
}

}  // namespace
}  // namespace ds::aio
