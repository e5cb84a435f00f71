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
#pragma once

#include <ATen/core/Tensor.h>

#include <deque>
#include <map>
#include <memory>
#include <utility>
#include <vector>

#include "ds/comm/communicator.h"

namespace ds::pipe {

class StageLink {
 public:
  explicit StageLink(std::shared_ptr<comm::Communicator> pipe);
  ~StageLink();
  StageLink(const StageLink&) = delete;
  StageLink& operator=(const StageLink&) = delete;

  // Asynchronous: `t` is kept (a contiguous copy if it is not) until the message has left.
  // Tags must be >= 0 and < 2^23. A message to this stage itself is queued in memory.
  void send(const at::Tensor& t, int dst, int tag);
  at::Tensor recv(int src, int tag);
  // Waits for every send issued so far (and surfaces its error).
  void wait_sends();

  static constexpr int kMaxDims = 8;

 private:
  std::shared_ptr<comm::Communicator> pipe_;
  struct Pending {
    at::Tensor header, data;
    comm::Work header_work, data_work;
  };
  std::vector<Pending> pending_;
  std::map<int, std::deque<at::Tensor>> local_;  // messages to this stage itself, by tag
};

}  // namespace ds::pipe
