// check_swap_path: ZeRO-Infinity's pre-flight check of its NVMe swap directory, so that a
// bad path fails at start-up with a clear message instead of hours into training.
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>

#include "ds/aio/buffer.h"
#include "ds/aio/file.h"
#include "ds/common/error.h"
#include "ds/common/strings.h"

namespace ds::aio {
namespace {

std::string needed(uint64_t bytes) {
  return ds::str(ds::format_bytes(static_cast<double>(bytes)), " (", bytes, " bytes)");
}

// Unlinks a path when destroyed.
struct RemoveOnExit {
  std::string path;
  ~RemoveOnExit() { ::unlink(path.c_str()); }
};

// Creates a small file with O_DIRECT in `dir`, writes one aligned block, reads it back,
// removes it. Returns the file's alignment; throws with the reason when any step fails.
size_t probe_direct_io(const std::string& dir) {
  static std::atomic<unsigned> counter{0};
  const std::string probe_path =
      ds::str(dir, dir.back() == '/' ? "" : "/", ".ds_aio_probe.", ::getpid(), ".", counter.fetch_add(1));
  File probe(probe_path, FileOptions{OpenMode::ReadWrite, true, true});
  RemoveOnExit remove{probe_path};
  const size_t block = std::max(probe.alignment(), kDirectIoAlignment);
  AlignedBuffer out(block, block);
  AlignedBuffer in(block, block);
  for (size_t i = 0; i < block; ++i) out.bytes()[i] = static_cast<char>(i * 131 + 7);
  const ssize_t wrote = ::pwrite(probe.fd(), out.data(), block, 0);
  if (wrote != static_cast<ssize_t>(block)) {
    const int err = wrote < 0 ? errno : EIO;
    throw IoError(ds::str("a direct write of ", block, " bytes to ", probe_path, " returned ", wrote,
                          wrote < 0 ? ds::str(": ", std::strerror(err)) : std::string()),
                  err);
  }
  const ssize_t got = ::pread(probe.fd(), in.data(), block, 0);
  if (got != static_cast<ssize_t>(block) || std::memcmp(in.data(), out.data(), block) != 0) {
    const int err = got < 0 ? errno : EIO;
    throw IoError(ds::str("a direct read of ", block, " bytes from ", probe_path,
                          got < 0 ? ds::str(" failed: ", std::strerror(err)) : " returned other data"),
                  err);
  }
  return probe.alignment();
}

}  // namespace

SwapPathInfo check_swap_path(const std::string& path, uint64_t bytes_needed) {
  const std::string prefix = ds::str("swap path ", path);
  const std::string need = ds::str("ZeRO-Infinity needs ", needed(bytes_needed), " there");
  DS_CHECK(!path.empty(), "swap path is empty (", need, ")");
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    const int err = errno;
    if (err == ENOENT) throw ds::SystemError(ds::str(prefix, " does not exist (", need, ")"));
    throw ds::SystemError(ds::str(prefix, ": ", std::strerror(err), " (", need, ")"));
  }
  if (!S_ISDIR(st.st_mode)) throw ds::SystemError(ds::str(prefix, " is not a directory (", need, ")"));

  struct statvfs vfs {};
  if (::statvfs(path.c_str(), &vfs) != 0) {
    throw ds::SystemError(ds::str(prefix, ": statvfs: ", std::strerror(errno), " (", need, ")"));
  }
  if (vfs.f_flag & ST_RDONLY) {
    throw ds::SystemError(ds::str(prefix, " is not writable: read-only filesystem (", need, ")"));
  }
  if (::access(path.c_str(), W_OK | X_OK) != 0) {
    throw ds::SystemError(ds::str(prefix, " is not writable: ", std::strerror(errno), " (", need, ")"));
  }
  SwapPathInfo info;
  info.free_bytes = static_cast<uint64_t>(vfs.f_bavail) * static_cast<uint64_t>(vfs.f_frsize);
  info.filesystem = filesystem_name(path);
  const auto check_free_space = [&] {
    if (info.free_bytes < bytes_needed) {
      throw ds::SystemError(ds::str(prefix, " (", info.filesystem, ") has ", needed(info.free_bytes),
                                    " free; ZeRO-Infinity needs ", needed(bytes_needed)));
    }
  };
  // The O_DIRECT probe first: a filesystem that refuses it (ramfs reports 0 bytes free) is
  // the more useful message. A probe that fails for lack of space reports the space instead.
  try {
    info.alignment = probe_direct_io(path);
  } catch (const IoError& e) {
    if (e.error_number() == ENOSPC || e.error_number() == EDQUOT) check_free_space();
    throw ds::SystemError(
        ds::str(prefix, " (", info.filesystem, ") refuses O_DIRECT: ", e.what(), " (", need, ")"));
  }
  check_free_space();
  return info;
}

}  // namespace ds::aio
