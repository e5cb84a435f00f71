// The submit/reap loop shared by both backends. What DeepSpeed's do_aio_operation_overlap /
// _sequential do, with every submission and every completion checked.
#include "transfer.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <deque>
#include <vector>

#include "ds/common/error.h"
#include "ds/common/strings.h"

namespace ds::aio::detail {

std::string describe_io(bool is_write, const std::string& path, uint64_t offset, uint64_t bytes) {
  return ds::str(is_write ? "writing " : "reading ", path, " at offset ", offset, " (",
                 ds::format_bytes(bytes), ")");
}

namespace {

class Transfer {
 public:
  Transfer(IoQueue& queue, const Segment& segment, const SubmitPolicy& policy)
      : queue_(queue), segment_(segment), policy_(policy), depth_(queue.capacity()) {
    DS_CHECK(depth_ > 0, "I/O queue without capacity");
    DS_CHECK(segment.alignment > 0, "alignment 0 for ", segment.path);
    DS_CHECK(policy.block_size > 0 && policy.block_size <= (size_t{1} << 30), "block size ",
             policy.block_size, " outside (0, 1 GiB]");
    slots_.resize(depth_);
    batch_.resize(depth_);
    completions_.resize(depth_);
    for (unsigned i = depth_; i-- > 0;) free_slots_.push_back(i);
  }

  void run() {
    while (true) {
      // overlap_events: top the queue up after every reap. Otherwise submit a full batch
      // and wait for all of it before the next one (DeepSpeed's "sequential" mode).
      if (!failed_ && (policy_.overlap_events || in_flight_ == 0)) issue();
      if (in_flight_ == 0) break;
      const unsigned min_completions = policy_.overlap_events ? 1 : in_flight_;
      const unsigned n = queue_.wait(completions_.data(), min_completions, in_flight_);
      for (unsigned i = 0; i < n; ++i) complete(completions_[i]);
    }
    if (failed_) throw IoError(error_message_, error_number_);
  }

 private:
  struct Piece {
    char* buffer;
    uint64_t offset;
    uint32_t bytes;
  };

  // The next request to send: an unfinished remainder first, then the next fresh block.
  bool next_piece(Piece& piece) {
    if (!retries_.empty()) {
      piece = retries_.front();
      retries_.pop_front();
      return true;
    }
    if (issued_ >= segment_.bytes) return false;
    const uint64_t n = std::min<uint64_t>(policy_.block_size, segment_.bytes - issued_);
    piece = Piece{segment_.buffer + issued_, segment_.offset + issued_, static_cast<uint32_t>(n)};
    issued_ += n;
    return true;
  }

  void issue() {
    unsigned n = 0;
    Piece piece{};
    while (!failed_ && in_flight_ + n < depth_ && next_piece(piece)) {
      const uint32_t slot = free_slots_.back();
      free_slots_.pop_back();
      slots_[slot] = piece;
      batch_[n++] = IoRequest{segment_.is_write, segment_.fd, piece.buffer, piece.bytes, piece.offset, slot};
      if (policy_.single_submit) {
        submit(batch_.data(), 1);
        n = 0;
      }
    }
    if (n > 0) submit(batch_.data(), n);
  }

  void submit(const IoRequest* requests, unsigned n) {
    int rejected_errno = 0;
    const unsigned accepted = queue_.submit(requests, n, rejected_errno);
    in_flight_ += accepted;
    if (accepted == n) return;
    const IoRequest& r = requests[accepted];
    fail(ds::str(describe_io(r.is_write, segment_.path, r.offset, r.bytes), ": ",
                 std::strerror(rejected_errno != 0 ? rejected_errno : EIO), " (refused at submission)"),
         rejected_errno != 0 ? rejected_errno : EIO);
    // The refused request and the ones after it were never sent: their slots are free.
    for (unsigned i = accepted; i < n; ++i) free_slots_.push_back(static_cast<uint32_t>(requests[i].tag));
  }

  void complete(const IoCompletion& c) {
    DS_CHECK(c.tag < slots_.size(), "completion for unknown request ", c.tag);
    const Piece piece = slots_[c.tag];
    free_slots_.push_back(static_cast<uint32_t>(c.tag));
    --in_flight_;
    const std::string what = describe_io(segment_.is_write, segment_.path, piece.offset, piece.bytes);
    if (c.result < 0) {
      const int err = static_cast<int>(-c.result);
      fail(ds::str(what, ": ", std::strerror(err)), err);
      return;
    }
    const auto done = static_cast<uint64_t>(c.result);
    if (done == piece.bytes) return;
    if (done > piece.bytes) {
      fail(ds::str(what, ": the kernel reported ", done, " bytes transferred"), EIO);
      return;
    }
    // A short transfer. With O_DIRECT a read stops short of a block boundary only at the end
    // of the file, and the remainder could not be sent aligned anyway.
    const bool aligned_stop = (piece.offset + done) % segment_.alignment == 0;
    if (!segment_.is_write && (done == 0 || !aligned_stop)) {
      fail(ds::str(what, ": unexpected end of file after ", done, " of ", piece.bytes, " bytes"), ENODATA);
      return;
    }
    if (done == 0 || !aligned_stop) {
      fail(ds::str(what, ": short write of ", done, " of ", piece.bytes, " bytes"), EIO);
      return;
    }
    if (!failed_) {
      retries_.push_back(
          Piece{piece.buffer + done, piece.offset + done, static_cast<uint32_t>(piece.bytes - done)});
    }
  }

  // Keeps the first error; the loop then only reaps what is still in flight.
  void fail(std::string message, int error_number) {
    if (failed_) return;
    failed_ = true;
    error_message_ = std::move(message);
    error_number_ = error_number;
  }

  IoQueue& queue_;
  const Segment& segment_;
  const SubmitPolicy policy_;
  const unsigned depth_;
  std::vector<Piece> slots_;  // indexed by request tag
  std::vector<uint32_t> free_slots_;
  std::vector<IoRequest> batch_;
  std::vector<IoCompletion> completions_;
  std::deque<Piece> retries_;
  uint64_t issued_ = 0;  // bytes of the segment handed out as fresh blocks
  unsigned in_flight_ = 0;
  bool failed_ = false;
  std::string error_message_;
  int error_number_ = 0;
};

}  // namespace

void run_transfer(IoQueue& queue, const Segment& segment, const SubmitPolicy& policy) {
  if (segment.bytes == 0) return;
  Transfer(queue, segment, policy).run();
}

}  // namespace ds::aio::detail
