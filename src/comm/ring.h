// Ring collectives over point-to-point messages, for any dtype ATen can add.
//
// reduce-scatter: N-1 steps; in step s rank r sends chunk (r-s-1) to rank r+1 and adds the
// chunk (r-s-2) it receives from rank r-1, so after the last step it holds the whole sum of
// chunk r. Each rank sends (N-1)/N of the buffer: the bandwidth-optimal volume.
// all-gather: N-1 steps forwarding the chunk received in the previous step.
// all-reduce: reduce-scatter then all-gather, in place (2(N-1)/N of the buffer).
// Each step's chunk goes as segments so that adding segment k overlaps receiving k+1.
#pragma once

#include <ATen/core/Tensor.h>

#include <functional>
#include <memory>
#include <vector>

#include "ds/comm/communicator.h"

namespace ds::comm {

// A started send or receive; wait() blocks until it finished (throws on error or timeout).
class PendingOp {
 public:
  virtual ~PendingOp() = default;
  virtual void wait(Millis timeout) = 0;
};

// What the ring algorithms need from a backend.
class Transport {
 public:
  virtual ~Transport() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // `buffer` is a contiguous 1-D byte tensor that stays alive until the op is waited on.
  virtual std::unique_ptr<PendingOp> isend(const at::Tensor& buffer, int peer, uint32_t tag) = 0;
  virtual std::unique_ptr<PendingOp> irecv(const at::Tensor& buffer, int peer, uint32_t tag) = 0;
};

struct RingOptions {
  Millis timeout{std::chrono::seconds(300)};
  int64_t segment_bytes = 4 << 20;
  uint32_t tag_base = 0;  // distinct per collective so a late message can't match a newer one
};

// Each returns the bytes this rank sent.
int64_t ring_reduce_scatter(Transport& t, at::Tensor& output, const at::Tensor& input, ReduceOp op,
                            const RingOptions& o);
int64_t ring_all_gather(Transport& t, at::Tensor& output, const at::Tensor& input, const RingOptions& o);
int64_t ring_all_reduce(Transport& t, at::Tensor& buffer, ReduceOp op, const RingOptions& o);
// Binomial tree from root: log2(N) rounds.
int64_t tree_broadcast(Transport& t, at::Tensor& buffer, int root, const RingOptions& o);
// N-1 rounds of pairwise exchange (send to r+s, receive from r-s).
int64_t pairwise_all_to_all(Transport& t, at::Tensor& output, const at::Tensor& input,
                            const std::vector<int64_t>& output_splits, const std::vector<int64_t>& input_splits,
                            const RingOptions& o);

// acc = op(acc, incoming) elementwise (Avg accumulates as Sum).
void reduce_into(at::Tensor& acc, const at::Tensor& incoming, ReduceOp op);
// Offsets of consecutive splits.
std::vector<int64_t> split_offsets(const std::vector<int64_t>& splits);

}  // namespace ds::comm
