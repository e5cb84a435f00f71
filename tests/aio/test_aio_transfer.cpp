// The submit/reap loop (src/aio/transfer.cpp) against a scripted queue that performs each
// request with plain pread/pwrite but can cut it short, fail it, or refuse it at submission:
// the cases a real disk produces rarely and at random.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <deque>
#include <vector>

#include <gtest/gtest.h>

#include "aio_test_support.h"
#include "ds/aio/buffer.h"
#include "ds/aio/file.h"
#include "support/errors.h"
#include "transfer.h"

namespace ds::aio::detail {
namespace {

using test::fill_random;
using test::TempDir;

class ScriptedQueue final : public IoQueue {
 public:
  explicit ScriptedQueue(unsigned depth) : depth_(depth) {}

  // Script.
  uint32_t max_bytes_per_request = UINT32_MAX;  // longer requests complete short
  uint64_t fail_offset = UINT64_MAX;            // the request starting here completes with -fail_errno
  int fail_errno = EIO;
  int refuse_submit_call = -1;  // this submit call refuses its 2nd request
  int64_t over_report = 0;      // added to every result

  // Observations.
  std::vector<unsigned> batch_sizes;
  std::vector<unsigned> wait_minimums;
  unsigned peak_in_flight = 0;
  unsigned in_flight = 0;

  AioBackend backend() const override { return AioBackend::Libaio; }
  unsigned capacity() const override { return depth_; }

  unsigned submit(const IoRequest* requests, unsigned n, int& rejected_errno) override {
    rejected_errno = 0;
    const int call = static_cast<int>(batch_sizes.size());
    batch_sizes.push_back(n);
    for (unsigned i = 0; i < n; ++i) {
      if (call == refuse_submit_call && i == 1) {
        rejected_errno = EBADF;
        return i;
      }
      ++in_flight;
      peak_in_flight = std::max(peak_in_flight, in_flight);
      EXPECT_LE(in_flight, depth_) << "more requests in flight than the queue depth";
      done_.push_back(IoCompletion{requests[i].tag, perform(requests[i])});
    }
    return n;
  }

  unsigned wait(IoCompletion* out, unsigned min_completions, unsigned max_completions) override {
    wait_minimums.push_back(min_completions);
    EXPECT_GE(done_.size(), min_completions) << "waiting for requests that were never submitted";
    unsigned n = 0;
    while (n < max_completions && !done_.empty()) {
      out[n++] = done_.front();
      done_.pop_front();
      --in_flight;
    }
    return n;
  }

 private:
  int64_t perform(const IoRequest& r) {
    if (r.offset == fail_offset) return -fail_errno;
    const size_t bytes = std::min<uint32_t>(r.bytes, max_bytes_per_request);
    const ssize_t n = r.is_write ? ::pwrite(r.fd, r.buffer, bytes, static_cast<off_t>(r.offset))
                                 : ::pread(r.fd, r.buffer, bytes, static_cast<off_t>(r.offset));
    return n < 0 ? -errno : n + over_report;
  }

  unsigned depth_;
  std::deque<IoCompletion> done_;
};

struct Fixture {
  TempDir dir;
  File file{dir.file("t.bin"), FileOptions{OpenMode::ReadWrite, /*direct=*/false}};
  Segment segment(bool is_write, char* buffer, uint64_t bytes, uint64_t offset = 0,
                  size_t alignment = 1) const {
    return Segment{is_write, file.fd(), buffer, bytes, offset, file.path(), alignment};
  }
};

TEST(Transfer, ShortTransfersAreContinuedUntilComplete) {
  Fixture fx;
  ScriptedQueue q(4);
  q.max_bytes_per_request = 3000;  // every 64 KiB request is served in 22 pieces
  std::vector<char> out(1 << 20), in(1 << 20);
  fill_random(out.data(), out.size(), 1);
  run_transfer(q, fx.segment(true, out.data(), out.size(), 4096), {64 << 10, false, true});
  run_transfer(q, fx.segment(false, in.data(), in.size(), 4096), {64 << 10, false, true});
  EXPECT_EQ(in, out);
  EXPECT_EQ(q.in_flight, 0u);
}

TEST(Transfer, AnErrorStopsSubmittingDrainsInFlightAndNamesTheRequest) {
  Fixture fx;
  ScriptedQueue q(8);
  q.fail_offset = 3 * 65536;
  q.fail_errno = EIO;
  std::vector<char> out(1 << 20);
  try {
    run_transfer(q, fx.segment(true, out.data(), out.size()), {64 << 10, false, true});
    FAIL() << "no error";
  } catch (const IoError& e) {
    EXPECT_EQ(e.error_number(), EIO);
    EXPECT_NE(std::string(e.what()).find("writing " + fx.file.path() +
                                         " at offset 196608 (64.00 KiB): Input/output error"),
              std::string::npos)
        << e.what();
  }
  EXPECT_EQ(q.in_flight, 0u) << "requests were still in flight when the error was thrown";
  EXPECT_LE(fx.file.size(), 1u << 20);
}

TEST(Transfer, ARequestRefusedAtSubmissionIsReported) {
  Fixture fx;
  ScriptedQueue q(4);
  q.refuse_submit_call = 1;
  std::vector<char> out(1 << 20);
  EXPECT_ERROR_HAS(run_transfer(q, fx.segment(true, out.data(), out.size()), {64 << 10, false, true}),
                   "Bad file descriptor (refused at submission)");
  EXPECT_EQ(q.in_flight, 0u);
}

TEST(Transfer, EndOfFileIsAnErrorForReads) {
  Fixture fx;
  std::vector<char> data(5000, 'x');
  ASSERT_EQ(::pwrite(fx.file.fd(), data.data(), data.size(), 0), 5000);
  std::vector<char> in(8192);
  for (size_t alignment : {size_t{1}, size_t{4096}}) {
    ScriptedQueue q(2);
    EXPECT_ERROR_HAS(
        run_transfer(q, fx.segment(false, in.data(), in.size(), 0, alignment), {4096, false, true}),
        "unexpected end of file after");
  }
}

TEST(Transfer, ACompletionClaimingMoreBytesThanRequestedIsAnError) {
  Fixture fx;
  ScriptedQueue q(2);
  q.over_report = 1;
  std::vector<char> out(8192);
  EXPECT_ERROR_HAS(run_transfer(q, fx.segment(true, out.data(), out.size()), {4096, false, true}),
                   "the kernel reported 4097 bytes transferred");
}

TEST(Transfer, SingleSubmitSendsOneRequestPerCallBatchedSendsUpToTheDepth) {
  Fixture fx;
  std::vector<char> out(40 << 10);  // ten 4 KiB blocks
  ScriptedQueue single(4);
  run_transfer(single, fx.segment(true, out.data(), out.size()), {4096, true, true});
  EXPECT_EQ(single.batch_sizes, std::vector<unsigned>(10, 1u));
  ScriptedQueue batched(4);
  run_transfer(batched, fx.segment(true, out.data(), out.size()), {4096, false, false});
  EXPECT_EQ(batched.batch_sizes, (std::vector<unsigned>{4, 4, 2}));
  EXPECT_EQ(batched.peak_in_flight, 4u);
}

TEST(Transfer, OverlapEventsReapsOneAtATimeSequentialWaitsForTheBatch) {
  Fixture fx;
  std::vector<char> out(40 << 10);
  ScriptedQueue overlap(4);
  run_transfer(overlap, fx.segment(true, out.data(), out.size()), {4096, false, true});
  for (unsigned m : overlap.wait_minimums) EXPECT_EQ(m, 1u);
  ScriptedQueue sequential(4);
  run_transfer(sequential, fx.segment(true, out.data(), out.size()), {4096, false, false});
  EXPECT_EQ(sequential.wait_minimums, (std::vector<unsigned>{4, 4, 2}));
}

TEST(Transfer, BlockSizeSplitsTheRangeIncludingAShortLastBlock) {
  Fixture fx;
  ScriptedQueue q(64);
  std::vector<char> out(3 * 65536 + 8192);
  run_transfer(q, fx.segment(true, out.data(), out.size()), {65536, false, true});
  ASSERT_EQ(q.batch_sizes.size(), 1u);
  EXPECT_EQ(q.batch_sizes[0], 4u);
  EXPECT_EQ(fx.file.size(), out.size());
}

}  // namespace
}  // namespace ds::aio::detail
