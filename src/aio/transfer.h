// Internal: moves one contiguous byte range between memory and a file through an IoQueue,
// as `block_size` requests with up to the queue's capacity in flight.
//
//   Segment s{/*is_write=*/true, fd, buffer, bytes, offset, path, alignment};
//   run_transfer(queue, s, {block_size, single_submit, overlap_events});   // throws IoError
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "io_queue.h"

namespace ds::aio::detail {

struct Segment {
  bool is_write = false;
  int fd = -1;
  char* buffer = nullptr;
  uint64_t bytes = 0;
  uint64_t offset = 0;
  std::string path;      // for error messages
  size_t alignment = 1;  // direct-I/O alignment of the file (1: buffered)
};

struct SubmitPolicy {
  size_t block_size = 1048576;
  bool single_submit = false;  // one submit call per request, else one per batch
  bool overlap_events = true;  // refill as requests complete, else submit a batch and wait for all of it
};

// Runs the whole segment; returns when every request has completed. Each completion is
// checked: a short transfer is continued from where it stopped; an error (negative result,
// end of file, a request the kernel refused) stops new submissions, waits for the requests
// still in flight (their buffers belong to the caller) and throws ds::aio::IoError naming
// the path, the offset and size of the failed request.
void run_transfer(IoQueue& queue, const Segment& segment, const SubmitPolicy& policy);

// "writing /nvme/x.swp at offset 1048576 (1.00 MiB)"
std::string describe_io(bool is_write, const std::string& path, uint64_t offset, uint64_t bytes);

}  // namespace ds::aio::detail
