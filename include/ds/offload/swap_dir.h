// A swap directory of one rank of one run — <nvme_path>/ds-<kind>-rank<r>@<host>@<pid>-XXXXXX —
// holding one file, removed with the SwapDir and on every exit the process controls (signals
// included, ds::CleanupScope). The swappers call remove_stale_swap_dirs first.
#pragma once

#include <string>

#include "ds/common/cleanup.h"

namespace ds::offload {

class SwapDir {
 public:
  // kind: "swap" (optimizer states) or "params" (weight shards); file: the file's name.
  SwapDir(const std::string& nvme_path, const std::string& kind, int rank, const std::string& file);
  ~SwapDir();
  SwapDir(const SwapDir&) = delete;
  SwapDir& operator=(const SwapDir&) = delete;
  const std::string& dir() const { return dir_; }
  const std::string& file() const { return file_; }

 private:
  std::string dir_, file_;
  CleanupScope cleanup_;
};

// Removes what killed runs of this host left under nvme_path; prints a line per directory.
void remove_stale_swap_dirs(const std::string& nvme_path);

}  // namespace ds::offload
