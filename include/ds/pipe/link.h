// Tensors between pipeline stages, point to point over the pipe group, with no shapes agreed
// in advance: every message is a small header (dtype, rank, sizes) followed by the data, so a
// stage learns its neighbour's activation shape from the first message and a shape that
// changes (a shorter last micro-batch, another sequence length) is still received correctly.
// The header costs one more small message per tensor; on loopback Gloo that is ~0.1 ms
// against the milliseconds of the tensor itself (docs/BENCHMARKS.md).
//
//   ds::pipe::StageLink link(groups.pipe);
//   link.send(activation, /*dst=*/stage + 1, /*tag=*/7);   // returns at once
//   at::Tensor x = link.recv(/*src=*/stage - 1, /*tag=*/7);  // blocks (communicator's timeout)
//   link.wait_sends();                                       // every send has left
//
// Messages with the same (source, tag) arrive in the order they were sent. bf16/fp16 tensors
// travel as they are (half the bytes of fp32).
//
// Split over the tensor group (DeepSpeed's pipeline.pipe_partitioned / grad_partitioned): when
// every rank of a stage's tensor group holds the same tensor, each sends only its chunk
// (comm::chunk_of over the group) to its peer, and the receiving group all-gathers the whole:
// 1/t of the bytes cross between stages. The first split message of each key on a link is
// checked to be the same on every rank of the group (a hash of its first MiB); a tensor that
// differs is an error naming the key to turn off.
//
//   ds::pipe::StageLink link(groups.pipe, groups.tensor);
//   link.send(activation, stage + 1, 7, "pipeline.pipe_partitioned");
//   at::Tensor x = link.recv(stage - 1, 7, /*split=*/true);
#pragma once

#include <ATen/core/Tensor.h>

#include <deque>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "ds/comm/communicator.h"

namespace ds::pipe {

class StageLink {
 public:
  // `split_over`: the tensor group messages may be split over (null: none).
  explicit StageLink(std::shared_ptr<comm::Communicator> pipe, std::shared_ptr<comm::Communicator> split_over = nullptr);
  ~StageLink();
  StageLink(const StageLink&) = delete;
  StageLink& operator=(const StageLink&) = delete;

  // Asynchronous: `t` is kept (a contiguous copy if it is not) until the message has left.
  // Tags must be >= 0 and < 2^23. A message to this stage itself is queued in memory.
  // `split_key` (non-null): send only this rank's chunk over the tensor group; the key names
  // the setting in errors. The receiver must pass split = true for the same messages.
  void send(const at::Tensor& t, int dst, int tag, const char* split_key = nullptr);
  at::Tensor recv(int src, int tag, bool split = false);
  // Waits for every send issued so far (and surfaces its error).
  void wait_sends();

  static constexpr int kMaxDims = 8;

 private:
  bool splits() const { return split_over_ && split_over_->size() > 1; }
  void check_same_over_group(const at::Tensor& t, int dst, int tag, const char* key);

  std::shared_ptr<comm::Communicator> pipe_, split_over_;
  std::vector<std::string> checked_keys_;
  struct Pending {
    at::Tensor header, data;
    comm::Work header_work, data_work;
  };
  std::vector<Pending> pending_;
  std::map<int, std::deque<at::Tensor>> local_;  // messages to this stage itself, by tag
};

}  // namespace ds::pipe
