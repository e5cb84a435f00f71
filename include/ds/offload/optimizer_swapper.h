// OptimizerSwapper: ZeRO-Infinity's optimizer-state swapping (offload_optimizer.device "nvme").
//
// This rank's optimizer states (Adam's exp_avg and exp_avg_sq, ...) and, when they are copies
// of the weights (bf16/fp16 training), its fp32 masters live in one file under
// <nvme_path>/ds-swap-rank<r>@<host>@<pid>-XXXXXX/, written with O_DIRECT through ds::aio. The rank's
// elements (every unit's chunk, in unit order) are cut into sub-groups of at most
// `sub_group_size` elements; a sub-group's tensors sit contiguously in the file, each padded
// to 4 KiB. The optimizer step walks the sub-groups with three rotating buffers: reading
// sub-group i+1, computing sub-group i and writing sub-group i-1 overlap.
//
//   OptimizerSwapper swap(options, unit_lengths, optimizer.init_state(...).size(), swap_master);
//   swap.for_each([&](const SwapSegment& s, at::Tensor master, std::vector<at::Tensor>& states) {
//     optimizer.step(master, grad.slice(...), states, ...);
//   });
//
// The directory is created fresh for each run and rank and removed by the destructor, and on
// the signals that end a run (ds::CleanupScope); creating one removes the directories killed
// runs of this host left.
// Space is reserved (fallocate) when the swapper is made, so a disk too small fails then,
// with the bytes needed, not in the middle of a step. Every sub-group is checksummed (xxh64)
// as it is written and verified as it is read back.
#pragma once

#include <ATen/core/Tensor.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "ds/aio/buffer.h"
#include "ds/aio/file.h"
#include "ds/aio/handle.h"

namespace ds::offload {

class SwapDir;

struct SwapOptions {
  std::string nvme_path;
  int rank = 0;
  int64_t sub_group_size = 1'000'000'000;  // elements per sub-group
  int64_t buffer_count = 4;                // rotating buffers (at least 3 are used)
  bool pin_memory = false;
  aio::AioOptions aio;
};

// A piece of one unit inside a sub-group: elements [offset, offset + length) of the unit's
// chunk on this rank.
struct SwapSegment {
  size_t unit = 0;
  int64_t offset = 0, length = 0;
};

class OptimizerSwapper {
 public:
  // unit_lengths: this rank's chunk length of each unit. num_states: tensors per element
  // (optimizer states); swap_master adds the fp32 master as one more. `initial` gives the
  // starting values of the states for n elements (the optimizer's init_state).
  OptimizerSwapper(SwapOptions options, std::vector<int64_t> unit_lengths, size_t num_states, bool swap_master,
                   const std::function<std::vector<at::Tensor>(int64_t)>& initial);
  ~OptimizerSwapper();
  OptimizerSwapper(const OptimizerSwapper&) = delete;
  OptimizerSwapper& operator=(const OptimizerSwapper&) = delete;

  // The bytes the swap file needs for these sizes (for the pre-flight check).
  static uint64_t bytes_needed(const std::vector<int64_t>& unit_lengths, size_t tensors, int64_t sub_group_size);

  // Calls fn on every segment of every sub-group, in order, with views into the I/O buffer:
  // `master` (undefined unless swap_master) and the states. With write_back the sub-group is
  // written back after fn.
  using SegmentFn = std::function<void(const SwapSegment&, at::Tensor master, std::vector<at::Tensor>& states)>;
  void for_each(const SegmentFn& fn, bool write_back = true);

  // One unit's whole chunk, copied out of / into the file (checkpoints, GatheredParameters).
  // `master` is ignored unless swap_master; write_unit with no states leaves them as they are.
  void read_unit(size_t unit, at::Tensor* master, std::vector<at::Tensor>* states);
  void write_unit(size_t unit, const at::Tensor& master, const std::vector<at::Tensor>& states);

  const std::string& directory() const;
  const std::string& path() const { return file_path_; }
  uint64_t file_bytes() const { return file_bytes_; }
  size_t sub_groups() const { return groups_.size(); }
  int64_t buffer_bytes() const;  // held in memory for swapping
  struct Stats {
    uint64_t bytes_read = 0, bytes_written = 0;
    double io_wait_s = 0;   // time the step waited for the disk
    double step_s = 0;      // whole for_each calls
    double checksum_s = 0;  // hashing sub-groups as they are written and verifying them as read
  };
  const Stats& stats() const { return stats_; }
  void reset_stats() { stats_ = {}; }

 private:
  struct Group {
    int64_t begin = 0, length = 0;  // rank-local element range
    uint64_t file_offset = 0, slot_bytes = 0;
    std::vector<SwapSegment> segments;
  };
  size_t tensors() const { return num_states_ + (swap_master_ ? 1 : 0); }
  uint64_t group_bytes(const Group& g) const { return g.slot_bytes * tensors(); }
  void run(const SegmentFn& fn, bool write_back, int64_t only_unit);
  void verify(size_t group, const aio::AlignedBuffer& buf);
  at::Tensor view(aio::AlignedBuffer& buf, const Group& g, size_t slot, int64_t offset, int64_t length);

  SwapOptions options_;
  std::vector<int64_t> unit_lengths_;
  size_t num_states_ = 0;
  bool swap_master_ = false;
  std::vector<Group> groups_;
  std::vector<uint64_t> checksums_;  // xxh64 of each sub-group as last written
  std::unique_ptr<SwapDir> swap_dir_;
  std::string file_path_;
  uint64_t file_bytes_ = 0;
  std::unique_ptr<aio::AioHandle> aio_;
  aio::File file_;
  std::vector<aio::AlignedBuffer> buffers_;
  Stats stats_;
};

}  // namespace ds::offload
