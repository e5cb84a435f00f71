// Internal: the small interface a kernel I/O queue implements (io_uring ring or libaio
// context), and the two factories. One queue belongs to one worker thread: not thread-safe.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "ds/aio/handle.h"

namespace ds::aio::detail {

struct IoRequest {
  bool is_write = false;
  int fd = -1;
  char* buffer = nullptr;
  uint32_t bytes = 0;
  uint64_t offset = 0;
  uint64_t tag = 0;  // returned in the completion
};

struct IoCompletion {
  uint64_t tag = 0;
  int64_t result = 0;  // bytes transferred, or -errno
};

class IoQueue {
 public:
  virtual ~IoQueue() = default;
  virtual AioBackend backend() const = 0;
  // The most requests the caller may keep in flight.
  virtual unsigned capacity() const = 0;

  // Hands requests[0, n) to the kernel and returns how many were accepted (a prefix). When
  // fewer than n are accepted, `rejected_errno` is the errno the kernel gave for
  // requests[result] (it will not complete) and requests after it were not submitted.
  // Failures of the queue itself throw ds::SystemError; the queue is unusable afterwards.
  virtual unsigned submit(const IoRequest* requests, unsigned n, int& rejected_errno) = 0;

  // Waits until at least `min_completions` (>= 1) requests have completed and stores up to
  // `max_completions` of them in `out`; returns how many. Interrupted waits are resumed.
  virtual unsigned wait(IoCompletion* out, unsigned min_completions, unsigned max_completions) = 0;
};

// Throw ds::SystemError (naming the call and errno) when the backend cannot be set up.
std::unique_ptr<IoQueue> make_uring_queue(unsigned depth);
std::unique_ptr<IoQueue> make_libaio_queue(unsigned depth);

}  // namespace ds::aio::detail
