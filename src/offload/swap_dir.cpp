#include "ds/offload/swap_dir.h"

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <set>

#include "ds/common/error.h"
#include "ds/common/strings.h"

namespace ds::offload {

namespace {

bool is_swap_dir(const std::string& name) { return name.rfind("ds-swap-", 0) == 0 || name.rfind("ds-params-", 0) == 0; }

}  // namespace

void remove_stale_swap_dirs(const std::string& nvme_path) {
  for (const StaleEntry& e : find_stale(nvme_path, is_swap_dir)) {
    std::error_code ec;
    const auto removed = std::filesystem::remove_all(e.path, ec);
    if (ec) {
      std::fprintf(stderr, "warning: cannot remove %s, left by process %ld that is gone: %s\n", e.path.c_str(), e.pid,
                   ec.message().c_str());
    } else if (removed > 0) {
      std::fprintf(stderr, "[ds] removed %s, left by process %ld that is gone\n", e.path.c_str(), e.pid);
    }
  }
  // Directories of other hosts (a shared nvme_path): their owners cannot be checked from here.
  static std::mutex mu;
  static std::set<std::string> named;
  std::lock_guard<std::mutex> lock(mu);
  for (const std::string& path : find_foreign(nvme_path, is_swap_dir))
    if (named.insert(path).second)
      std::fprintf(stderr, "warning: %s belongs to a run on another host; if that run is over, remove it: rm -rf '%s'\n",
                   path.c_str(), path.c_str());
}

SwapDir::SwapDir(const std::string& nvme_path, const std::string& kind, int rank, const std::string& file) {
  std::string tmpl = ds::str(nvme_path, "/ds-", kind, "-rank", rank, owner_tag(), "-XXXXXX");
  if (!::mkdtemp(tmpl.data()))
    throw SystemError(ds::str("cannot create a swap directory under ", nvme_path, ": ", std::strerror(errno)));
  dir_ = tmpl;
  file_ = dir_ + "/" + file;
  cleanup_ = CleanupScope({file_}, dir_);
}

SwapDir::~SwapDir() {
  cleanup_ = CleanupScope();  // unlinks the file and removes the directory
  std::error_code ec;
  std::filesystem::remove_all(dir_, ec);  // anything else in it
}

}  // namespace ds::offload
