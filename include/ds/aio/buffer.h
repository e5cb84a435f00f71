// Memory for direct (O_DIRECT) disk I/O: aligned buffers and a pool of page-locked ones.
//
// O_DIRECT transfers go straight between the device and user memory, so the buffer address
// (as well as the file offset and the size) must be aligned to the file's direct-I/O
// alignment — 512 or 4096 bytes on today's disks. kDirectIoAlignment (4096) satisfies every
// common device. Locking the pages (mlock) keeps them resident, as DeepSpeed's pinned
// swap buffers are; it is best effort: without CAP_IPC_LOCK the RLIMIT_MEMLOCK limit (often
// 8 MiB) applies, and locked() then says false.
//
//   ds::aio::AlignedBuffer buf(64 << 20);            // 64 MiB, 4096-aligned, uninitialized
//   buf.lock_pages();                                  // best effort
//   handle.sync_pread(file, buf.data(), buf.size(), 0);
//
//   ds::aio::BufferPool pool(4, 64 << 20);           // 4 page-locked 64 MiB buffers
//   auto lease = pool.acquire();                       // blocks until one is free
//   handle.sync_pread(file, lease.data(), lease.size(), offset);
//   // the buffer goes back to the pool when `lease` is destroyed
#pragma once

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <vector>

namespace ds::aio {

// The alignment used when a file does not report its own: a multiple of every common
// logical block size (512, 4096) and the page size of x86-64 and most arm64 kernels.
inline constexpr size_t kDirectIoAlignment = 4096;

// An owning, aligned, uninitialized byte buffer (posix_memalign). Move-only. The allocation
// is rounded up to a multiple of the alignment, so whole-block direct I/O never runs past it.
class AlignedBuffer {
 public:
  AlignedBuffer() = default;
  // alignment: a power of two, at least sizeof(void*). bytes == 0 allocates nothing.
  explicit AlignedBuffer(size_t bytes, size_t alignment = kDirectIoAlignment);
  ~AlignedBuffer();
  AlignedBuffer(AlignedBuffer&& other) noexcept;
  AlignedBuffer& operator=(AlignedBuffer&& other) noexcept;
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;

  void* data() { return data_; }
  const void* data() const { return data_; }
  char* bytes() { return static_cast<char*>(data_); }
  const char* bytes() const { return static_cast<const char*>(data_); }
  size_t size() const { return size_; }
  size_t alignment() const { return alignment_; }

  // mlock()s the whole allocation; returns whether the pages are now locked. Failure (limit,
  // no permission) is not an error: the buffer still works, only unpinned.
  bool lock_pages();
  bool locked() const { return locked_; }

 private:
  void release() noexcept;

  void* data_ = nullptr;
  size_t size_ = 0;
  size_t capacity_ = 0;  // allocated bytes (size_ rounded up to the alignment)
  size_t alignment_ = kDirectIoAlignment;
  bool locked_ = false;
};

// A fixed set of equally sized aligned buffers, handed out as RAII leases. Thread-safe.
// Leases keep the pool's storage alive, so a lease may outlive the BufferPool object.
class BufferPool {
 public:
  struct Options {
    size_t alignment = kDirectIoAlignment;
    bool lock_pages = true;  // best effort, see AlignedBuffer::lock_pages
  };

  // A borrowed buffer; returned to the pool when destroyed (or on release()). Move-only.
  class Lease {
   public:
    Lease() = default;
    ~Lease() { release(); }
    Lease(Lease&& other) noexcept;
    Lease& operator=(Lease&& other) noexcept;
    Lease(const Lease&) = delete;
    Lease& operator=(const Lease&) = delete;

    bool valid() const { return buffer_ != nullptr; }
    AlignedBuffer& buffer() { return *buffer_; }
    void* data() { return buffer_->data(); }
    char* bytes() { return buffer_->bytes(); }
    size_t size() const { return buffer_->size(); }
    // Index of this buffer in the pool, in [0, count()).
    size_t index() const { return index_; }
    void release() noexcept;

   private:
    friend class BufferPool;
    struct State;
    Lease(std::shared_ptr<State> state, AlignedBuffer* buffer, size_t index)
        : state_(std::move(state)), buffer_(buffer), index_(index) {}
    std::shared_ptr<State> state_;
    AlignedBuffer* buffer_ = nullptr;
    size_t index_ = 0;
  };

  BufferPool(size_t count, size_t buffer_bytes) : BufferPool(count, buffer_bytes, Options{}) {}
  BufferPool(size_t count, size_t buffer_bytes, const Options& options);

  // Blocks until a buffer is free.
  Lease acquire();
  // A free buffer now, or nothing.
  std::optional<Lease> try_acquire();

  size_t count() const;
  size_t buffer_bytes() const;
  size_t available() const;     // buffers not leased right now
  size_t locked_count() const;  // buffers whose pages are locked

 private:
  std::shared_ptr<Lease::State> state_;
};

}  // namespace ds::aio
