// Files opened for direct I/O, and the pre-flight check of a ZeRO-Infinity swap directory.
//
// File is an RAII file descriptor that remembers its path (for error messages) and the
// alignment direct I/O needs on it (statx STATX_DIOALIGN, or 4096 when the filesystem does
// not say). A filesystem that refuses O_DIRECT (ramfs, some FUSE and network filesystems)
// makes the constructor throw an error that names the path and the filesystem.
//
//   ds::aio::File swap("/nvme/zero/opt_state_3.swp", {ds::aio::OpenMode::ReadWrite});
//   swap.allocate(64 << 20);                 // reserve the space now, not mid-training
//   handle.sync_pwrite(swap, buf.data(), buf.size(), 0);
//
//   // Before training: does /nvme/zero exist, is it writable, has it 40 GB free, O_DIRECT?
//   ds::aio::SwapPathInfo info = ds::aio::check_swap_path("/nvme/zero", 40'000'000'000);
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "ds/common/error.h"

namespace ds::aio {

// An I/O error with its errno (ENOSPC, EIO, ...); what() names the file, offset and size:
// "writing /nvme/x.swp at offset 1048576 (1.00 MiB): No space left on device".
class IoError : public ds::SystemError {
 public:
  IoError(const std::string& message, int error_number)
      : ds::SystemError(message), error_number_(error_number) {}
  int error_number() const { return error_number_; }

 private:
  int error_number_;
};

enum class OpenMode {
  Read,       // O_RDONLY; the file must exist
  Write,      // O_WRONLY | O_CREAT
  ReadWrite,  // O_RDWR | O_CREAT
};

struct FileOptions {
  OpenMode mode = OpenMode::Read;
  bool direct = true;     // O_DIRECT: bypass the page cache (what swapping wants)
  bool truncate = false;  // O_TRUNC, for Write / ReadWrite
  mode_t permissions = 0600;
};

class File {
 public:
  File() = default;
  // Throws ds::SystemError naming the path (missing file, permissions, no O_DIRECT support).
  // When the filesystem refuses O_DIRECT and this call created the file, the file is removed.
  File(std::string path, const FileOptions& options);
  ~File();
  File(File&& other) noexcept;
  File& operator=(File&& other) noexcept;
  File(const File&) = delete;
  File& operator=(const File&) = delete;

  bool is_open() const { return fd_ >= 0; }
  int fd() const { return fd_; }
  const std::string& path() const { return path_; }
  bool direct() const { return direct_; }
  bool readable() const { return mode_ != OpenMode::Write; }
  bool writable() const { return mode_ != OpenMode::Read; }
  // Direct I/O needs buffer address, offset and size to be multiples of this (1 when the
  // file is not opened with O_DIRECT).
  size_t alignment() const { return alignment_; }

  uint64_t size() const;          // fstat
  void allocate(uint64_t bytes);  // fallocate: reserve [0, bytes) (ENOSPC now, not later)
  void truncate(uint64_t bytes);  // ftruncate
  void sync();                    // fdatasync
  void close();                   // checked close; the destructor closes silently

 private:
  std::string path_;
  int fd_ = -1;
  OpenMode mode_ = OpenMode::Read;
  bool direct_ = false;
  size_t alignment_ = 1;
};

// What check_swap_path found.
struct SwapPathInfo {
  uint64_t free_bytes = 0;  // available to this user (statvfs f_bavail)
  size_t alignment = 0;     // direct-I/O alignment of a file created there
  std::string filesystem;   // "ext4", "xfs", "tmpfs", ... or "unknown (0x...)"
};

// ZeRO-Infinity's pre-flight check of a swap directory. Throws ds::Error naming the path and
// the bytes needed when `path` does not exist, is not a directory, is not writable, has fewer
// than `bytes_needed` bytes free, or refuses O_DIRECT (a small temporary file is created
// there, written and read back with O_DIRECT, and removed).
SwapPathInfo check_swap_path(const std::string& path, uint64_t bytes_needed);

// Name of the filesystem holding `path` ("ext4", "tmpfs", ...), for messages.
std::string filesystem_name(const std::string& path);

}  // namespace ds::aio
