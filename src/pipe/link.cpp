#include "ds/pipe/link.h"

#include <ATen/ATen.h>

#include <algorithm>

#include "ds/common/error.h"

namespace ds::pipe {

namespace {

constexpr int64_t kHeaderLength = 2 + StageLink::kMaxDims;  // dtype, rank, sizes
constexpr int kMaxTag = 1 << 23;  // two tags each, under the communicator's 2^24

// Header and data of one message: two tags per user tag, so a header can never be taken for
// data of another message.
int header_tag(int tag) { return 2 * tag; }
int data_tag(int tag) { return 2 * tag + 1; }

void check_tag(int tag) {
  if (tag < 0 || tag >= kMaxTag) throw Error(ds::str("pipeline link: tag ", tag, " is outside 0..", kMaxTag - 1));
}

}  // namespace

StageLink::StageLink(std::shared_ptr<comm::Communicator> pipe) : pipe_(std::move(pipe)) {}

StageLink::~StageLink() {
  // A link dropped with sends in flight (an error unwound the batch) still must not free
  // their buffers under the communicator; their errors no longer matter.
  for (Pending& p : pending_) {
    try {
      p.header_work.wait();
      p.data_work.wait();
    } catch (...) {
    }
  }
}

void StageLink::send(const at::Tensor& t, int dst, int tag) {
  check_tag(tag);
  if (t.dim() > kMaxDims)
    throw Error(ds::str("pipeline link: a tensor of ", t.dim(), " dimensions; at most ", kMaxDims, " are sent"));
  if (dst == pipe_->rank()) {  // a stage's chunk to its own next chunk (interleaved on one stage)
    local_[tag].push_back(t.detach());
    return;
  }
  Pending p;
  p.header = at::zeros({kHeaderLength}, at::kLong);
  auto* h = p.header.data_ptr<int64_t>();
  h[0] = int64_t(t.scalar_type());
  h[1] = t.dim();
  for (int64_t d = 0; d < t.dim(); ++d) h[2 + d] = t.size(d);
  p.data = t.detach().contiguous();
  p.header_work = pipe_->send(p.header, dst, header_tag(tag));
  if (p.data.numel() > 0) p.data_work = pipe_->send(p.data, dst, data_tag(tag));
  pending_.push_back(std::move(p));
  // Keep the list short: what has left can go.
  pending_.erase(std::remove_if(pending_.begin(), pending_.end() - 1,
                                [](const Pending& q) { return q.header_work.is_completed() && q.data_work.is_completed() &&
                                                              !q.header_work.exception() && !q.data_work.exception(); }),
                 pending_.end() - 1);
}

at::Tensor StageLink::recv(int src, int tag) {
  check_tag(tag);
  if (src == pipe_->rank()) {
    auto& queue = local_[tag];
    if (queue.empty())
      throw Error(ds::str("pipeline link: stage ", src, " waits for a message from itself (tag ", tag,
                          ") that it has not sent: the schedule is broken"));
    at::Tensor t = queue.front();
    queue.pop_front();
    return t;
  }
  at::Tensor header = at::empty({kHeaderLength}, at::kLong);
  pipe_->recv(header, src, header_tag(tag)).wait();
  const auto* h = header.data_ptr<int64_t>();
  if (h[1] < 0 || h[1] > kMaxDims || h[0] < 0 || h[0] >= int64_t(c10::ScalarType::NumOptions))
    throw Error(ds::str("pipeline link: a malformed message header from stage ", src, " (tag ", tag,
                        "): do both stages run the same deepspeed.cpp build?"));
  std::vector<int64_t> sizes(h + 2, h + 2 + h[1]);
  at::Tensor data = at::empty(sizes, at::TensorOptions().dtype(c10::ScalarType(h[0])));
  if (data.numel() > 0) pipe_->recv(data, src, data_tag(tag)).wait();
  return data;
}

void StageLink::wait_sends() {
  for (Pending& p : pending_) {  // on an error the rest stay pending (the destructor waits)
    p.header_work.wait();
    p.data_work.wait();
  }
  pending_.clear();
}

}  // namespace ds::pipe
