// The asynchronous disk I/O engine behind ZeRO-Infinity's NVMe swapping (DeepSpeed's aio).
//
// An AioHandle owns `intra_op_parallelism` worker threads, each with its own kernel queue
// (an io_uring ring, or a libaio context as the fallback). A pread/pwrite is cut into stripes,
// one per worker; each worker cuts its stripe into `block_size` requests and keeps up to
// `queue_depth` of them in flight. Every completion is checked: a short transfer is retried
// for the remainder, an error becomes ds::aio::IoError naming the file, the offset and the
// size. The core depends on nothing but the C++ standard library, liburing and libaio.
//
//   ds::aio::AioHandle aio;                                   // DeepSpeed's defaults
//   ds::aio::File f("/nvme/zero/group3.swp", {ds::aio::OpenMode::ReadWrite});
//   ds::aio::AlignedBuffer buf(64 << 20);
//   ds::aio::AioTicket w = aio.pwrite(f, buf.data(), buf.size(), 0);   // returns at once
//   ...                                                                // compute meanwhile
//   w.wait();                                    // throws ds::aio::IoError on failure
//
// The swap pattern (read group i+1 while computing group i while writing group i-1):
//   AioTicket next = aio.pread(file[i + 1], in.data(), n, 0);
//   step(group i);
//   AioTicket prev = aio.pwrite(file[i], out.data(), n, 0);
//   next.wait(); prev.wait();
//
// Buffers must stay alive and untouched until their ticket is done; a ticket's destructor
// waits for the operation, so dropping a ticket never leaves the kernel writing into freed
// memory. All member functions are thread-safe.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "ds/aio/file.h"
#include "ds/common/error.h"

namespace ds::aio {

enum class AioBackend {
  Auto,     // io_uring, or libaio when io_uring cannot be set up (old kernel, seccomp, sysctl)
  IoUring,  // io_uring only: throws when it is not available
  Libaio,   // Linux native AIO (what DeepSpeed uses)
};
const char* backend_name(AioBackend backend);  // "auto", "io_uring", "libaio"
// Parses "auto" | "io_uring" | "libaio"; throws ds::ConfigError listing the valid names.
AioBackend parse_backend(std::string_view name);

// The `aio` section of ds_config.json (same names and defaults as DeepSpeed's code).
struct AioOptions {
  size_t block_size = 1048576;        // bytes per request; a multiple of 4096
  unsigned queue_depth = 8;           // requests in flight per worker
  unsigned intra_op_parallelism = 1;  // worker threads (older name: thread_count)
  bool single_submit = false;         // one submission system call per request
  bool overlap_events = true;         // refill the queue as requests complete
  AioBackend backend = AioBackend::Auto;

  // Throws ds::ConfigError naming the field and the value.
  void validate() const;
};

namespace detail {
struct Operation;
}

// The future of one pread/pwrite. Move-only.
class AioTicket {
 public:
  AioTicket() = default;
  explicit AioTicket(std::shared_ptr<detail::Operation> op) : op_(std::move(op)) {}
  // Waits for the operation (its buffer may be freed right after). An error that nobody
  // wait()ed for is printed on stderr rather than lost.
  ~AioTicket();
  AioTicket(AioTicket&&) noexcept = default;
  AioTicket& operator=(AioTicket&& other) noexcept;
  AioTicket(const AioTicket&) = delete;
  AioTicket& operator=(const AioTicket&) = delete;

  bool valid() const { return op_ != nullptr; }
  // True when the operation has finished (successfully or not); never blocks.
  bool done() const;
  // Blocks until the operation has finished; rethrows its error (ds::aio::IoError or
  // ds::Error). May be called again: the same error is rethrown.
  void wait();
  size_t bytes() const;

 private:
  void wait_quietly() noexcept;
  std::shared_ptr<detail::Operation> op_;
};

namespace detail {
class Worker;
}

class AioHandle {
 public:
  // Starts the workers and their queues; throws ds::ConfigError for invalid options and
  // ds::SystemError when no backend can be set up.
  explicit AioHandle(const AioOptions& options = {});
  // Waits for every operation still queued or in flight, then stops the workers.
  ~AioHandle();
  AioHandle(const AioHandle&) = delete;
  AioHandle& operator=(const AioHandle&) = delete;

  const AioOptions& options() const { return options_; }
  // The backend in use (never Auto).
  AioBackend backend() const { return backend_; }
  // One line for logs: "io_uring", or "libaio (io_uring unavailable: ...)".
  const std::string& backend_note() const { return backend_note_; }

  // Asynchronous: checks the arguments (alignment, open mode) and queues the operation. The
  // File must stay open until the ticket is done. [offset, offset + bytes) of the file.
  [[nodiscard]] AioTicket pwrite(const File& file, const void* buffer, size_t bytes, uint64_t offset);
  [[nodiscard]] AioTicket pread(const File& file, void* buffer, size_t bytes, uint64_t offset);
  // The same on a path: opened with O_DIRECT for this operation (created for writing).
  [[nodiscard]] AioTicket pwrite(const std::string& path, const void* buffer, size_t bytes, uint64_t offset);
  [[nodiscard]] AioTicket pread(const std::string& path, void* buffer, size_t bytes, uint64_t offset);

  // Synchronous conveniences: the above followed by wait().
  void sync_pwrite(const File& file, const void* buffer, size_t bytes, uint64_t offset);
  void sync_pread(const File& file, void* buffer, size_t bytes, uint64_t offset);
  void sync_pwrite(const std::string& path, const void* buffer, size_t bytes, uint64_t offset);
  void sync_pread(const std::string& path, void* buffer, size_t bytes, uint64_t offset);

 private:
  AioTicket start(bool is_write, std::shared_ptr<const File> owned, const File& file, void* buffer,
                  size_t bytes, uint64_t offset);
  void start_workers();

  AioOptions options_;
  AioBackend backend_ = AioBackend::Auto;
  std::string backend_note_;
  std::vector<std::unique_ptr<detail::Worker>> workers_;
  std::atomic<size_t> next_worker_{0};
};

}  // namespace ds::aio
