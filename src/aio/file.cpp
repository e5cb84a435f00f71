// File: an O_DIRECT file descriptor with its path and direct-I/O alignment.
#include "ds/aio/file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <utility>

#include "ds/aio/buffer.h"
#include "ds/common/error.h"

namespace ds::aio {
namespace {

const char* mode_words(OpenMode mode) {
  switch (mode) {
    case OpenMode::Read:
      return "reading";
    case OpenMode::Write:
      return "writing";
    case OpenMode::ReadWrite:
      return "reading and writing";
  }
  return "?";
}

// statx's STATX_DIOALIGN (Linux 6.1+) says what this file needs; older kernels and
// filesystems that do not report it get the conservative 4096.
size_t direct_io_alignment(int fd) {
#ifdef STATX_DIOALIGN
  struct statx sx {};
  if (::statx(fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &sx) == 0 && (sx.stx_mask & STATX_DIOALIGN) &&
      sx.stx_dio_offset_align > 0) {
    return std::max<size_t>(sx.stx_dio_offset_align, sx.stx_dio_mem_align);
  }
#endif
  return kDirectIoAlignment;
}

std::string parent_of(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

// Removes a file this process has just created (empty, ours) after O_DIRECT was refused.
void remove_if_just_created(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode) && st.st_size == 0 && st.st_uid == ::geteuid()) {
    ::unlink(path.c_str());
  }
}

}  // namespace

std::string filesystem_name(const std::string& path) {
  struct statfs fs {};
  if (::statfs(path.c_str(), &fs) != 0 && ::statfs(parent_of(path).c_str(), &fs) != 0) return "unknown";
  switch (static_cast<unsigned long>(fs.f_type)) {
    case 0xEF53:
      return "ext4";  // also ext2/ext3
    case 0x58465342:
      return "xfs";
    case 0x9123683E:
      return "btrfs";
    case 0x01021994:
      return "tmpfs";
    case 0x858458F6:
      return "ramfs";
    case 0x794C7630:
      return "overlayfs";
    case 0x65735546:
      return "fuse";
    case 0x6969:
      return "nfs";
    case 0xFF534D42:
      return "cifs";
    case 0x2FC12FC1:
      return "zfs";
    case 0xF2F52010:
      return "f2fs";
    case 0x9FA0:
      return "proc";
    default:
      break;
  }
  return ds::str("unknown (0x", std::hex, static_cast<unsigned long>(fs.f_type), ")");
}

File::File(std::string path, const FileOptions& options)
    : path_(std::move(path)), mode_(options.mode), direct_(options.direct) {
  int flags = O_CLOEXEC;
  flags |= mode_ == OpenMode::Read ? O_RDONLY : mode_ == OpenMode::Write ? O_WRONLY : O_RDWR;
  if (direct_) flags |= O_DIRECT;
  if (options.truncate && mode_ != OpenMode::Read) flags |= O_TRUNC;

  int err = 0;
  bool created = false;
  for (int attempt = 0; attempt < 8 && fd_ < 0; ++attempt) {
    // Open an existing file first and create one only when it is missing (O_EXCL): that
    // way a refusal of O_DIRECT removes exactly the file this call created.
    fd_ = ::open(path_.c_str(), flags);
    if (fd_ >= 0) break;
    err = errno;
    if (err != ENOENT || mode_ == OpenMode::Read) break;
    fd_ = ::open(path_.c_str(), flags | O_CREAT | O_EXCL, options.permissions);
    if (fd_ >= 0) break;
    err = errno;
    if (err == EEXIST) continue;  // someone created it meanwhile: open theirs
    created = err == EINVAL;      // Linux creates the file, then refuses O_DIRECT
    break;
  }
  if (fd_ < 0) {
    if (err == EINVAL && direct_) {
      if (created) remove_if_just_created(path_);
      throw IoError(ds::str("cannot open ", path_, " with O_DIRECT: the ", filesystem_name(path_),
                            " filesystem does not support direct I/O; put swap files on a local disk "
                            "filesystem such as ext4 or xfs"),
                    err);
    }
    throw IoError(ds::str("opening ", path_, " for ", mode_words(mode_), ": ", std::strerror(err)), err);
  }
  alignment_ = direct_ ? direct_io_alignment(fd_) : 1;
}

File::~File() {
  if (fd_ >= 0) ::close(fd_);
}

File::File(File&& other) noexcept
    : path_(std::move(other.path_)),
      fd_(std::exchange(other.fd_, -1)),
      mode_(other.mode_),
      direct_(other.direct_),
      alignment_(other.alignment_) {}

File& File::operator=(File&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) ::close(fd_);
    path_ = std::move(other.path_);
    fd_ = std::exchange(other.fd_, -1);
    mode_ = other.mode_;
    direct_ = other.direct_;
    alignment_ = other.alignment_;
  }
  return *this;
}

uint64_t File::size() const {
  DS_CHECK(fd_ >= 0, "size of a closed file (", path_, ")");
  struct stat st {};
  DS_CHECK_SYS(::fstat(fd_, &st), "fstat ", path_);
  return static_cast<uint64_t>(st.st_size);
}

void File::allocate(uint64_t bytes) {
  DS_CHECK(fd_ >= 0, "allocate on a closed file (", path_, ")");
  if (bytes == 0) return;
  if (::fallocate(fd_, 0, 0, static_cast<off_t>(bytes)) == 0) return;
  const int err = errno;
  if (err == EOPNOTSUPP) {  // no reservation on this filesystem: at least set the size
    if (size() < bytes) truncate(bytes);
    return;
  }
  throw IoError(ds::str("reserving ", bytes, " bytes for ", path_, ": ", std::strerror(err)), err);
}

void File::truncate(uint64_t bytes) {
  DS_CHECK(fd_ >= 0, "truncate on a closed file (", path_, ")");
  if (::ftruncate(fd_, static_cast<off_t>(bytes)) != 0) {
    const int err = errno;
    throw IoError(ds::str("setting the size of ", path_, " to ", bytes, ": ", std::strerror(err)), err);
  }
}

void File::sync() {
  DS_CHECK(fd_ >= 0, "sync on a closed file (", path_, ")");
  if (::fdatasync(fd_) != 0) {
    const int err = errno;
    throw IoError(ds::str("syncing ", path_, ": ", std::strerror(err)), err);
  }
}

void File::close() {
  if (fd_ < 0) return;
  const int fd = std::exchange(fd_, -1);
  if (::close(fd) != 0 && errno != EINTR) {
    const int err = errno;
    throw IoError(ds::str("closing ", path_, ": ", std::strerror(err)), err);
  }
}

}  // namespace ds::aio
