// ParamSwapper: ZeRO-Infinity's parameter swapping (offload_param.device "nvme", stage 3).
//
// Each rank's half-precision weight shards — what the stage-3 all-gathers send — live in one
// file under <nvme_path>/ds-params-rank<r>-XXXXXX/. A unit's shard is read when the unit is
// gathered (ahead of use when prefetched) and dropped once the gather has sent it; the
// optimizer writes the updated shards back. Pages are dropped from the page cache after each
// flush, so the shards really live on the disk. The directory is removed with the swapper.
#pragma once

#include <ATen/core/Tensor.h>

#include <string>
#include <vector>

namespace ds {

class ParamSwapper {
 public:
  // Checks nvme_path (ds::aio::check_swap_path) and reserves the file.
  ParamSwapper(const std::string& nvme_path, int rank, std::vector<int64_t> lengths, at::ScalarType dtype);
  ~ParamSwapper();
  ParamSwapper(const ParamSwapper&) = delete;
  ParamSwapper& operator=(const ParamSwapper&) = delete;

  // Unit u's whole shard, read from the file into a new tensor.
  at::Tensor read(size_t u) const;
  // Elements [offset, offset + values.numel()) of unit u's shard.
  void write(size_t u, int64_t offset, const at::Tensor& values);
  // Makes the writes durable and drops the file's pages from memory.
  void flush();

  uint64_t file_bytes() const { return file_bytes_; }
  const std::string& path() const { return path_; }

 private:
  std::vector<int64_t> lengths_;
  std::vector<uint64_t> offsets_;
  at::ScalarType dtype_;
  size_t element_ = 2;
  std::string dir_, path_;
  int fd_ = -1;
  uint64_t file_bytes_ = 0;
};

}  // namespace ds
