#include "ds/runtime/param_swapper.h"

#include <ATen/ATen.h>
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>

#include "ds/aio/file.h"
#include "ds/common/error.h"
#include "ds/common/strings.h"

namespace ds {

ParamSwapper::ParamSwapper(const std::string& nvme_path, int rank, std::vector<int64_t> lengths, at::ScalarType dtype)
    : lengths_(std::move(lengths)), dtype_(dtype), element_(c10::elementSize(dtype)) {
  for (int64_t n : lengths_) {
    offsets_.push_back(file_bytes_);
    file_bytes_ += uint64_t(n) * element_;
  }
  aio::check_swap_path(nvme_path, file_bytes_);
  std::string tmpl = ds::str(nvme_path, "/ds-params-rank", rank, "-XXXXXX");
  if (!::mkdtemp(tmpl.data()))
    throw SystemError(ds::str("cannot create a parameter swap directory under ", nvme_path, ": ", std::strerror(errno)));
  dir_ = tmpl;
  path_ = dir_ + "/params.swp";
  fd_ = ::open(path_.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  int rc = fd_ < 0 ? errno : (file_bytes_ ? ::posix_fallocate(fd_, 0, off_t(file_bytes_)) : 0);
  if (rc != 0) {
    if (fd_ >= 0) ::close(fd_);
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
    throw SystemError(ds::str("offload_param: cannot create ", path_, " (", file_bytes_, " bytes): ", std::strerror(rc)));
  }
}

ParamSwapper::~ParamSwapper() {
  if (fd_ >= 0) ::close(fd_);
  std::error_code ec;
  std::filesystem::remove_all(dir_, ec);
}

at::Tensor ParamSwapper::read(size_t u) const {
  at::Tensor t = at::empty({lengths_[u]}, at::TensorOptions().dtype(dtype_));
  auto* p = static_cast<char*>(t.data_ptr());
  size_t left = size_t(lengths_[u]) * element_;
  uint64_t at = offsets_[u];
  while (left > 0) {
    ssize_t n = ::pread(fd_, p, left, off_t(at));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0)
      throw SystemError(ds::str("reading ", path_, " at offset ", at, " (", left, " bytes): ",
                                n < 0 ? std::strerror(errno) : "unexpected end of file"));
    p += n, left -= size_t(n), at += uint64_t(n);
  }
  return t;
}

void ParamSwapper::write(size_t u, int64_t offset, const at::Tensor& values) {
  DS_CHECK(values.scalar_type() == dtype_ && values.is_contiguous() && offset + values.numel() <= lengths_[u],
           "ParamSwapper::write: bad values for unit ", u);
  const char* p = static_cast<const char*>(values.data_ptr());
  size_t left = size_t(values.numel()) * element_;
  uint64_t at = offsets_[u] + uint64_t(offset) * element_;
  while (left > 0) {
    ssize_t n = ::pwrite(fd_, p, left, off_t(at));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) throw SystemError(ds::str("writing ", path_, " at offset ", at, " (", left, " bytes): ", std::strerror(errno)));
    p += n, left -= size_t(n), at += uint64_t(n);
  }
}

void ParamSwapper::flush() {
  if (::fdatasync(fd_) != 0) throw SystemError(ds::str("flushing ", path_, ": ", std::strerror(errno)));
  ::posix_fadvise(fd_, 0, 0, POSIX_FADV_DONTNEED);
}

}  // namespace ds
