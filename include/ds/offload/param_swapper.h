// ParamSwapper: ZeRO-Infinity's parameter swapping (offload_param.device "nvme", stage 3).
//
// Each rank's weight shards — what the stage-3 all-gathers send, in the param dtype — live in
// one file under <nvme_path>/ds-params-rank<r>@<host>@<pid>-XXXXXX/, each unit's shard at a 4 KiB-aligned
// offset, read and written with O_DIRECT through ds::aio (so they really live on the disk,
// not in the page cache). As the coordinator's ShardStore it reads a unit's shard when the
// unit is fetched — ahead of use when the trace prefetches it — into a pooled aligned buffer
// that goes back to the pool once the all-gather has sent it. The optimizer writes updated
// shards into a staging buffer per unit; a unit's buffer is written back asynchronously as
// soon as all of it is final, and flush() waits for the writes. A read of a unit waits for a
// write of it still in flight. The directory is removed with the swapper (and on the signals
// that end a run).
#pragma once

#include <ATen/core/Tensor.h>

#include <memory>
#include <string>
#include <vector>

#include "ds/aio/buffer.h"
#include "ds/aio/file.h"
#include "ds/aio/handle.h"
#include "ds/zero/coordinator.h"

namespace ds::offload {

class SwapDir;

struct ParamSwapOptions {
  std::string nvme_path;
  int rank = 0;
  aio::AioOptions aio;
};

class ParamSwapper final : public zero::ShardStore {
 public:
  // lengths[u]: elements of unit u's shard on this rank. Checks nvme_path
  // (ds::aio::check_swap_path) and reserves the file.
  ParamSwapper(ParamSwapOptions options, std::vector<int64_t> lengths, at::ScalarType dtype);
  // The bytes the file needs for these shard lengths (for the pre-flight check).
  static uint64_t bytes_needed(const std::vector<int64_t>& lengths, at::ScalarType dtype);
  ~ParamSwapper() override;
  ParamSwapper(const ParamSwapper&) = delete;
  ParamSwapper& operator=(const ParamSwapper&) = delete;

  // zero::ShardStore: asynchronous reads for the coordinator.
  void start_read(int u) override;
  at::Tensor take(int u) override;
  void give_back(int u) override;

  // Unit u's staging buffer (its whole shard, in the swapper's dtype): fill it, then say how
  // much of it became final with staged(); when all of it is, it is written back.
  at::Tensor staging(size_t u);
  void staged(size_t u, int64_t elements);
  // The whole shard of unit u takes `values` (any floating dtype; written asynchronously).
  void write(size_t u, const at::Tensor& values);
  // Waits for every write.
  void flush();
  // A copy of unit u's shard, read now (checkpoints, tests).
  at::Tensor read(size_t u);

  uint64_t file_bytes() const { return file_bytes_; }
  const std::string& path() const { return path_; }
  struct Stats {
    uint64_t bytes_read = 0, bytes_written = 0;
    int64_t reads = 0, writes = 0;
  };
  const Stats& stats() const { return stats_; }

 private:
  struct Unit {
    uint64_t offset = 0, bytes = 0, aligned_bytes = 0;
    aio::AlignedBuffer read_buffer, staging;
    aio::AioTicket read, write;
    bool reading = false;
    int64_t staged = 0;
  };
  aio::AlignedBuffer buffer_for(uint64_t bytes);
  void recycle(aio::AlignedBuffer buffer);
  at::Tensor view(aio::AlignedBuffer& buffer, size_t u);
  void write_staging(size_t u);

  std::vector<int64_t> lengths_;
  at::ScalarType dtype_;
  std::vector<Unit> units_;
  std::unique_ptr<SwapDir> swap_dir_;
  std::string path_;
  uint64_t file_bytes_ = 0;
  std::unique_ptr<aio::AioHandle> aio_;
  aio::File file_;
  std::vector<aio::AlignedBuffer> free_;  // buffers no unit holds, reused by size
  Stats stats_;
};

}  // namespace ds::offload
