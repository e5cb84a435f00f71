// The libaio backend (Linux native AIO, what DeepSpeed's aio uses): one context per worker.
//
// Unlike DeepSpeed (assert(submit_ret > 0), results never read), io_submit's return value is
// checked — a partial submission is continued, a rejected request is reported to the caller
// — and io_getevents' per-request `res` is handed back for the caller to check.
#include <libaio.h>

#include <cerrno>
#include <cstring>
#include <thread>
#include <vector>

#include "ds/common/error.h"
#include "io_queue.h"

namespace ds::aio::detail {
namespace {

constexpr int kMaxBusyRetries = 1000;  // EAGAIN retries, 1 ms apart

class LibaioQueue final : public IoQueue {
 public:
  explicit LibaioQueue(unsigned depth) : depth_(depth), iocbs_(depth), iocb_ptrs_(depth), events_(depth) {
    const int rc = io_setup(static_cast<int>(depth), &context_);
    if (rc < 0) {
      throw ds::SystemError(
          ds::str("io_setup(", depth, "): ", std::strerror(-rc),
                  rc == -EAGAIN ? " (system-wide limit /proc/sys/fs/aio-max-nr reached)" : ""));
    }
  }
  // io_destroy cancels what it can and waits for the rest.
  ~LibaioQueue() override { io_destroy(context_); }
  LibaioQueue(const LibaioQueue&) = delete;
  LibaioQueue& operator=(const LibaioQueue&) = delete;

  AioBackend backend() const override { return AioBackend::Libaio; }
  unsigned capacity() const override { return depth_; }

  unsigned submit(const IoRequest* requests, unsigned n, int& rejected_errno) override {
    rejected_errno = 0;
    check_usable();
    DS_CHECK(n <= depth_, "libaio: ", n, " requests submitted at once exceed the queue depth ", depth_);
    for (unsigned i = 0; i < n; ++i) {
      const IoRequest& r = requests[i];
      iocb* cb = &iocbs_[i];
      if (r.is_write) {
        io_prep_pwrite(cb, r.fd, r.buffer, r.bytes, static_cast<long long>(r.offset));
      } else {
        io_prep_pread(cb, r.fd, r.buffer, r.bytes, static_cast<long long>(r.offset));
      }
      cb->data = reinterpret_cast<void*>(static_cast<uintptr_t>(r.tag));
      iocb_ptrs_[i] = cb;
    }
    unsigned done = 0;
    int busy = 0;
    while (done < n) {
      const int rc = io_submit(context_, static_cast<long>(n - done), iocb_ptrs_.data() + done);
      if (rc > 0) {
        done += static_cast<unsigned>(rc);
        continue;
      }
      if (rc == -EINTR) continue;
      if ((rc == 0 || rc == -EAGAIN) && ++busy <= kMaxBusyRetries) {
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
        continue;
      }
      if (rc == 0 || rc == -EAGAIN) {
        broken_ = true;
        throw ds::SystemError(ds::str("io_submit: no progress after ", kMaxBusyRetries, " retries"));
      }
      // The kernel refused requests[done] (EBADF, EINVAL, EFAULT, ...); the rest stay unsent.
      rejected_errno = -rc;
      return done;
    }
    return n;
  }

  unsigned wait(IoCompletion* out, unsigned min_completions, unsigned max_completions) override {
    check_usable();
    const unsigned max = std::min(max_completions, depth_);
    DS_CHECK(min_completions <= max, "libaio: waiting for ", min_completions, " of at most ", max);
    unsigned got = 0;
    while (got < min_completions) {
      const int rc = io_getevents(context_, static_cast<long>(min_completions - got),
                                  static_cast<long>(max - got), events_.data(), nullptr);
      if (rc == -EINTR) continue;
      if (rc < 0) {
        broken_ = true;
        throw ds::SystemError(ds::str("io_getevents: ", std::strerror(-rc)));
      }
      for (int i = 0; i < rc; ++i) {
        out[got + i].tag = static_cast<uint64_t>(reinterpret_cast<uintptr_t>(events_[i].data));
        // res is an unsigned long holding either a byte count or -errno.
        out[got + i].result = static_cast<int64_t>(static_cast<long>(events_[i].res));
      }
      got += static_cast<unsigned>(rc);
    }
    return got;
  }

 private:
  void check_usable() const {
    if (broken_) throw ds::SystemError("libaio context unusable after an earlier failure");
  }

  io_context_t context_ = nullptr;
  unsigned depth_;
  std::vector<iocb> iocbs_;
  std::vector<iocb*> iocb_ptrs_;
  std::vector<io_event> events_;
  bool broken_ = false;
};

}  // namespace

std::unique_ptr<IoQueue> make_libaio_queue(unsigned depth) { return std::make_unique<LibaioQueue>(depth); }

}  // namespace ds::aio::detail
