// The io_uring backend (liburing): one ring per worker thread.
//
// The ring is created with IORING_SETUP_SUBMIT_ALL (Linux 5.18+, retried without it on older
// kernels) so that a request the kernel rejects at submission still consumes its entry and
// reports the error in its completion: every request's fate then arrives as a CQE, and
// cqe->res is checked for each one by the caller (transfer.cpp).
#include <liburing.h>

#include <cerrno>
#include <cstring>
#include <thread>

#include "ds/common/error.h"
#include "io_queue.h"

namespace ds::aio::detail {
namespace {

// How often a submission that makes no progress (EAGAIN/EBUSY: the kernel is short of
// memory) is retried, 1 ms apart, before the queue gives up.
constexpr int kMaxBusyRetries = 1000;

class UringQueue final : public IoQueue {
 public:
  explicit UringQueue(unsigned depth) : depth_(depth) {
    io_uring_params params{};
    params.flags = IORING_SETUP_SUBMIT_ALL;
    int rc = io_uring_queue_init_params(depth, &ring_, &params);
    if (rc == -EINVAL) {  // a kernel older than 5.18 does not know SUBMIT_ALL
      params = io_uring_params{};
      rc = io_uring_queue_init_params(depth, &ring_, &params);
    }
    if (rc < 0) {
      throw ds::SystemError(ds::str("io_uring_queue_init(", depth, " entries): ", std::strerror(-rc)));
    }
  }
  ~UringQueue() override { io_uring_queue_exit(&ring_); }
  UringQueue(const UringQueue&) = delete;
  UringQueue& operator=(const UringQueue&) = delete;

  AioBackend backend() const override { return AioBackend::IoUring; }
  unsigned capacity() const override { return depth_; }

  unsigned submit(const IoRequest* requests, unsigned n, int& rejected_errno) override {
    rejected_errno = 0;
    check_usable();
    DS_CHECK(io_uring_sq_ready(&ring_) == 0, "io_uring: submission queue not empty before submit");
    for (unsigned i = 0; i < n; ++i) {
      io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
      DS_CHECK(sqe != nullptr, "io_uring: no free submission entry for request ", i, " of ", n, " (ring of ",
               depth_, ")");
      const IoRequest& r = requests[i];
      if (r.is_write) {
        io_uring_prep_write(sqe, r.fd, r.buffer, r.bytes, r.offset);
      } else {
        io_uring_prep_read(sqe, r.fd, r.buffer, r.bytes, r.offset);
      }
      io_uring_sqe_set_data64(sqe, r.tag);
    }
    // The prepared entries are already visible to the kernel: they must all be consumed, or
    // the ring is unusable (a later submit would send them with stale buffers).
    int busy = 0;
    while (io_uring_sq_ready(&ring_) > 0) {
      const int rc = io_uring_submit(&ring_);
      if (rc > 0 || rc == -EINTR) continue;
      if ((rc == 0 || rc == -EAGAIN || rc == -EBUSY) && ++busy <= kMaxBusyRetries) {
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
        continue;
      }
      broken_ = true;
      throw ds::SystemError(
          ds::str("io_uring_submit of ", n, " requests: ", rc < 0 ? std::strerror(-rc) : "no progress"));
    }
    return n;
  }

  unsigned wait(IoCompletion* out, unsigned min_completions, unsigned max_completions) override {
    check_usable();
    unsigned got = drain(out, max_completions);
    while (got < min_completions) {
      io_uring_cqe* cqe = nullptr;
      const int rc = io_uring_wait_cqe_nr(&ring_, &cqe, min_completions - got);
      if (rc == -EINTR) continue;
      if (rc < 0) {
        broken_ = true;
        throw ds::SystemError(ds::str("io_uring_wait_cqe: ", std::strerror(-rc)));
      }
      got += drain(out + got, max_completions - got);
    }
    return got;
  }

 private:
  void check_usable() const {
    if (broken_) throw ds::SystemError("io_uring queue unusable after an earlier failure");
  }

  // Copies up to `max` ready completions to `out` and marks them seen.
  unsigned drain(IoCompletion* out, unsigned max) {
    unsigned total = 0;
    io_uring_cqe* cqes[64];
    while (total < max) {
      const unsigned want = std::min<unsigned>(64, max - total);
      const unsigned n = io_uring_peek_batch_cqe(&ring_, cqes, want);
      if (n == 0) break;
      for (unsigned i = 0; i < n; ++i) {
        out[total + i].tag = io_uring_cqe_get_data64(cqes[i]);
        out[total + i].result = cqes[i]->res;
      }
      io_uring_cq_advance(&ring_, n);
      total += n;
    }
    return total;
  }

  io_uring ring_{};
  unsigned depth_;
  bool broken_ = false;
};

}  // namespace

std::unique_ptr<IoQueue> make_uring_queue(unsigned depth) { return std::make_unique<UringQueue>(depth); }

}  // namespace ds::aio::detail
