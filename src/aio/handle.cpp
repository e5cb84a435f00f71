// AioHandle: worker threads with their own kernel queues, striping, tickets.
#include "ds/aio/handle.h"

#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <deque>
#include <mutex>
#include <thread>

#include "ds/common/strings.h"
#include "io_queue.h"
#include "transfer.h"

namespace ds::aio {

const char* backend_name(AioBackend backend) {
  switch (backend) {
    case AioBackend::Auto:
      return "auto";
    case AioBackend::IoUring:
      return "io_uring";
    case AioBackend::Libaio:
      return "libaio";
  }
  return "?";
}

AioBackend parse_backend(std::string_view name) {
  for (AioBackend b : {AioBackend::Auto, AioBackend::IoUring, AioBackend::Libaio}) {
    if (name == backend_name(b)) return b;
  }
  throw ds::ConfigError(ds::str("aio backend: expected auto, io_uring or libaio, got \"", name, "\""));
}

void AioOptions::validate() const {
  if (block_size < 4096 || block_size % 4096 != 0 || block_size > (size_t{1} << 30)) {
    throw ds::ConfigError(
        ds::str("aio.block_size: expected a multiple of 4096 between 4096 and 1073741824, got ", block_size));
  }
  if (queue_depth < 1 || queue_depth > 4096) {
    throw ds::ConfigError(ds::str("aio.queue_depth: expected 1..4096, got ", queue_depth));
  }
  if (intra_op_parallelism < 1 || intra_op_parallelism > 256) {
    throw ds::ConfigError(ds::str("aio.intra_op_parallelism: expected 1..256, got ", intra_op_parallelism));
  }
}

namespace detail {

// One pread/pwrite: `remaining` stripes still running on the workers.
struct Operation {
  Operation(size_t bytes_, unsigned parts, std::shared_ptr<const File> file)
      : bytes(bytes_), remaining(parts), owned_file(std::move(file)) {}

  void finish_part(std::exception_ptr part_error) {
    std::shared_ptr<const File> closing;
    {
      std::lock_guard<std::mutex> lock(mutex);
      if (part_error && !error) error = part_error;
      if (--remaining == 0) closing = std::move(owned_file);  // closed before waiters wake
    }
    closing.reset();
    finished.notify_all();
  }

  const size_t bytes;
  std::mutex mutex;
  std::condition_variable finished;
  unsigned remaining;
  std::exception_ptr error;
  bool observed = false;                   // someone called wait()
  std::shared_ptr<const File> owned_file;  // for the path overloads
};

struct Job {
  std::shared_ptr<Operation> op;
  Segment segment;
};

// A thread with its own kernel queue, running jobs in the order they are posted.
class Worker {
 public:
  Worker(std::unique_ptr<IoQueue> queue, const SubmitPolicy& policy)
      : queue_(std::move(queue)), policy_(policy), thread_([this] { main(); }) {}

  // Finishes the jobs already posted, then stops.
  ~Worker() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    wake_.notify_one();
    thread_.join();
  }
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;

  void post(Job job) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      jobs_.push_back(std::move(job));
    }
    wake_.notify_one();
  }

 private:
  void main() {
    while (true) {
      Job job;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [&] { return stop_ || !jobs_.empty(); });
        if (jobs_.empty()) return;
        job = std::move(jobs_.front());
        jobs_.pop_front();
      }
      std::exception_ptr error;
      try {
        run_transfer(*queue_, job.segment, policy_);
      } catch (...) {
        error = std::current_exception();
      }
      job.op->finish_part(error);
    }
  }

  std::unique_ptr<IoQueue> queue_;
  const SubmitPolicy policy_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<Job> jobs_;
  bool stop_ = false;
  std::thread thread_;  // last: starts once everything above is initialized
};

}  // namespace detail

// ---- AioTicket ----

AioTicket::~AioTicket() { wait_quietly(); }

AioTicket& AioTicket::operator=(AioTicket&& other) noexcept {
  if (this != &other) {
    wait_quietly();
    op_ = std::move(other.op_);
  }
  return *this;
}

bool AioTicket::done() const {
  if (!op_) return true;
  std::lock_guard<std::mutex> lock(op_->mutex);
  return op_->remaining == 0;
}

void AioTicket::wait() {
  DS_CHECK(op_ != nullptr, "wait() on an empty AioTicket");
  std::unique_lock<std::mutex> lock(op_->mutex);
  op_->finished.wait(lock, [&] { return op_->remaining == 0; });
  op_->observed = true;
  if (op_->error) std::rethrow_exception(op_->error);
}

size_t AioTicket::bytes() const { return op_ ? op_->bytes : 0; }

void AioTicket::wait_quietly() noexcept {
  if (!op_) return;
  std::unique_lock<std::mutex> lock(op_->mutex);
  op_->finished.wait(lock, [&] { return op_->remaining == 0; });
  if (op_->error && !op_->observed) {
    op_->observed = true;
    try {
      std::rethrow_exception(op_->error);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "ds::aio: an I/O error nobody waited for: %s\n", e.what());
    } catch (...) {
      std::fprintf(stderr, "ds::aio: an I/O error nobody waited for\n");
    }
  }
}

// ---- AioHandle ----

AioHandle::AioHandle(const AioOptions& options) : options_(options) {
  options_.validate();
  start_workers();
}

AioHandle::~AioHandle() { workers_.clear(); }

void AioHandle::start_workers() {
  const auto make_queues = [&](AioBackend backend) {
    std::vector<std::unique_ptr<detail::IoQueue>> queues;
    for (unsigned i = 0; i < options_.intra_op_parallelism; ++i) {
      queues.push_back(backend == AioBackend::IoUring ? detail::make_uring_queue(options_.queue_depth)
                                                      : detail::make_libaio_queue(options_.queue_depth));
    }
    return queues;
  };
  std::vector<std::unique_ptr<detail::IoQueue>> queues;
  if (options_.backend == AioBackend::Libaio) {
    queues = make_queues(AioBackend::Libaio);
    backend_note_ = "libaio";
  } else {
    try {
      queues = make_queues(AioBackend::IoUring);
      backend_note_ = "io_uring";
    } catch (const ds::SystemError& e) {
      if (options_.backend == AioBackend::IoUring) {
        throw ds::SystemError(ds::str("aio backend io_uring is not available: ", e.what()));
      }
      try {
        queues = make_queues(AioBackend::Libaio);
      } catch (const ds::SystemError& e2) {
        throw ds::SystemError(
            ds::str("no aio backend available: io_uring: ", e.what(), "; libaio: ", e2.what()));
      }
      backend_note_ = ds::str("libaio (io_uring unavailable: ", e.what(), ")");
    }
  }
  backend_ = queues.front()->backend();
  const detail::SubmitPolicy policy{options_.block_size, options_.single_submit, options_.overlap_events};
  for (auto& q : queues) workers_.push_back(std::make_unique<detail::Worker>(std::move(q), policy));
}

namespace {

// Everything a request needs before it may be queued; the message names the request.
void check_request(bool is_write, const File& file, const void* buffer, size_t bytes, uint64_t offset,
                   size_t block_size) {
  const std::string what = detail::describe_io(is_write, file.path(), offset, bytes);
  if (!file.is_open()) throw ds::Error(ds::str(what, ": the file is not open"));
  if (is_write && !file.writable()) throw ds::Error(ds::str(what, ": the file is opened for reading only"));
  if (!is_write && !file.readable()) throw ds::Error(ds::str(what, ": the file is opened for writing only"));
  if (bytes == 0) return;
  if (buffer == nullptr) throw ds::Error(ds::str(what, ": null buffer"));
  if (offset > static_cast<uint64_t>(INT64_MAX) - bytes) throw ds::Error(ds::str(what, ": offset overflows"));
  const size_t a = file.alignment();
  if (a <= 1) return;
  std::string misaligned;
  const auto note = [&](const char* name, uint64_t value) {
    if (value % a != 0) misaligned += ds::str(misaligned.empty() ? "" : ", ", name, " ", value);
  };
  note("buffer address", reinterpret_cast<uintptr_t>(buffer));
  note("offset", offset);
  note("size", bytes);
  if (!misaligned.empty()) {
    throw ds::Error(ds::str(what, ": O_DIRECT needs the buffer address, offset and size to be multiples of ",
                            a, " bytes on this file; not aligned: ", misaligned));
  }
  if (block_size % a != 0) {
    throw ds::Error(ds::str(what, ": aio.block_size ", block_size,
                            " is not a multiple of the file's direct-I/O ", "alignment ", a));
  }
}

}  // namespace

AioTicket AioHandle::start(bool is_write, std::shared_ptr<const File> owned, const File& file, void* buffer,
                           size_t bytes, uint64_t offset) {
  check_request(is_write, file, buffer, bytes, offset, options_.block_size);
  // Stripes: whole blocks, spread as evenly as possible over the workers.
  const uint64_t blocks = (bytes + options_.block_size - 1) / options_.block_size;
  const uint64_t stripes = std::min<uint64_t>(workers_.size(), blocks);
  auto op = std::make_shared<detail::Operation>(bytes, static_cast<unsigned>(stripes), std::move(owned));
  const size_t first_worker = next_worker_.fetch_add(1) % workers_.size();
  for (uint64_t s = 0; s < stripes; ++s) {
    const uint64_t begin = std::min<uint64_t>(bytes, s * blocks / stripes * options_.block_size);
    const uint64_t end = std::min<uint64_t>(bytes, (s + 1) * blocks / stripes * options_.block_size);
    detail::Segment segment{is_write,        file.fd(),      static_cast<char*>(buffer) + begin,
                            end - begin,     offset + begin, file.path(),
                            file.alignment()};
    workers_[(first_worker + s) % workers_.size()]->post(detail::Job{op, std::move(segment)});
  }
  return AioTicket(std::move(op));
}

AioTicket AioHandle::pwrite(const File& file, const void* buffer, size_t bytes, uint64_t offset) {
  return start(true, nullptr, file, const_cast<void*>(buffer), bytes, offset);
}

AioTicket AioHandle::pread(const File& file, void* buffer, size_t bytes, uint64_t offset) {
  return start(false, nullptr, file, buffer, bytes, offset);
}

AioTicket AioHandle::pwrite(const std::string& path, const void* buffer, size_t bytes, uint64_t offset) {
  auto file = std::make_shared<const File>(path, FileOptions{OpenMode::Write});
  const File& ref = *file;
  return start(true, std::move(file), ref, const_cast<void*>(buffer), bytes, offset);
}

AioTicket AioHandle::pread(const std::string& path, void* buffer, size_t bytes, uint64_t offset) {
  auto file = std::make_shared<const File>(path, FileOptions{OpenMode::Read});
  const File& ref = *file;
  return start(false, std::move(file), ref, buffer, bytes, offset);
}

void AioHandle::sync_pwrite(const File& file, const void* buffer, size_t bytes, uint64_t offset) {
  pwrite(file, buffer, bytes, offset).wait();
}

void AioHandle::sync_pread(const File& file, void* buffer, size_t bytes, uint64_t offset) {
  pread(file, buffer, bytes, offset).wait();
}

void AioHandle::sync_pwrite(const std::string& path, const void* buffer, size_t bytes, uint64_t offset) {
  pwrite(path, buffer, bytes, offset).wait();
}

void AioHandle::sync_pread(const std::string& path, void* buffer, size_t bytes, uint64_t offset) {
  pread(path, buffer, bytes, offset).wait();
}

}  // namespace ds::aio
