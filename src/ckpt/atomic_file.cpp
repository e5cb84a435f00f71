#include "ds/ckpt/atomic_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>

#include "ds/common/error.h"

namespace ds::ckpt {

namespace {

constexpr size_t kBufferBytes = size_t(1) << 20;

// Closes a descriptor on scope exit (read paths and fsync_directory).
class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  int get() const { return fd_; }

 private:
  int fd_;
};

}  // namespace

std::string parent_directory(const std::string& path) {
  auto slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

AtomicFile::AtomicFile(std::string path) : path_(std::move(path)) {
  temp_path_ = ds::str(path_, kTempMarker, owner_tag().substr(1));
  fd_ = DS_CHECK_SYS(::open(temp_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644),
                     "cannot create ", temp_path_);
  cleanup_ = CleanupScope({temp_path_}, "");  // removed on Ctrl-C, SIGTERM, abort() too
  buffer_.reserve(kBufferBytes);
}

AtomicFile::~AtomicFile() {
  if (committed_) return;
  if (fd_ >= 0) ::close(fd_);
  // cleanup_ unlinks the temp file (best effort: a leftover one is ignored by readers)
}

void AtomicFile::write_fully(const char* data, size_t size) {
  while (size > 0) {
    ssize_t n = ::write(fd_, data, size);
    if (n < 0 && errno == EINTR) continue;
    DS_CHECK_SYS(n, "writing ", temp_path_);
    data += n, size -= size_t(n);
  }
}

void AtomicFile::flush() {
  write_fully(buffer_.data(), buffer_.size());
  buffer_.clear();
}

void AtomicFile::write(const void* data, size_t size) {
  if (committed_) throw Error(ds::str("AtomicFile ", path_, ": write after commit"));
  if (size == 0) return;
  hash_.update(data, size);
  bytes_ += int64_t(size);
  const char* p = static_cast<const char*>(data);
  if (buffer_.size() + size <= kBufferBytes) {
    buffer_.insert(buffer_.end(), p, p + size);
    return;
  }
  flush();
  if (size >= kBufferBytes)
    write_fully(p, size);
  else
    buffer_.insert(buffer_.end(), p, p + size);
}

namespace {
std::atomic<CommitHook> g_commit_hook{nullptr};
}  // namespace

void set_commit_hook_for_testing(CommitHook hook) { g_commit_hook.store(hook); }

FileDigest AtomicFile::commit() {
  if (committed_) throw Error(ds::str("AtomicFile ", path_, ": committed twice"));
  flush();
  if (CommitHook hook = g_commit_hook.load()) hook(path_);
  DS_CHECK_SYS(::fsync(fd_), "fsync ", temp_path_);
  int fd = fd_;
  fd_ = -1;
  DS_CHECK_SYS(::close(fd), "closing ", temp_path_);
  DS_CHECK_SYS(::rename(temp_path_.c_str(), path_.c_str()), "renaming ", temp_path_, " to ", path_);
  cleanup_.release();
  committed_ = true;
  fsync_directory(parent_directory(path_));
  return {bytes_, hash_.digest()};
}

FileDigest write_file_atomic(const std::string& path, const void* data, size_t size) {
  AtomicFile f(path);
  f.write(data, size);
  return f.commit();
}

FileDigest write_file_atomic(const std::string& path, const std::string& text) {
  return write_file_atomic(path, text.data(), text.size());
}

void fsync_directory(const std::string& dir) {
  Fd fd(DS_CHECK_SYS(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC), "opening directory ", dir));
  DS_CHECK_SYS(::fsync(fd.get()), "fsync directory ", dir);
}

bool is_directory(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

void make_directories(const std::string& dir) {
  if (dir.empty() || is_directory(dir)) return;
  std::string parent = parent_directory(dir);
  if (parent != dir) make_directories(parent);
  if (::mkdir(dir.c_str(), 0755) != 0) {
    if (errno == EEXIST && is_directory(dir)) return;  // another rank made it first
    DS_CHECK_SYS(-1, "cannot create directory ", dir);
  }
  fsync_directory(parent);
}

bool remove_file_durably(const std::string& path) {
  if (::unlink(path.c_str()) != 0) {
    if (errno == ENOENT) return false;
    DS_CHECK_SYS(-1, "cannot remove ", path);
  }
  fsync_directory(parent_directory(path));
  return true;
}

std::optional<int64_t> file_size(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    if (errno == ENOENT || errno == ENOTDIR) return std::nullopt;
    DS_CHECK_SYS(-1, "cannot stat ", path);
  }
  if (!S_ISREG(st.st_mode)) throw Error(ds::str(path, " is not a regular file"));
  return int64_t(st.st_size);
}

FileContents read_file(const std::string& path) {
  Fd fd(DS_CHECK_SYS(::open(path.c_str(), O_RDONLY | O_CLOEXEC), "cannot open ", path));
  struct stat st {};
  DS_CHECK_SYS(::fstat(fd.get(), &st), "cannot stat ", path);
  if (!S_ISREG(st.st_mode)) throw Error(ds::str(path, " is not a regular file"));
  FileContents out;
  out.data.resize(size_t(st.st_size));
  size_t done = 0;
  while (done < out.data.size()) {
    ssize_t n = ::read(fd.get(), out.data.data() + done, out.data.size() - done);
    if (n < 0 && errno == EINTR) continue;
    DS_CHECK_SYS(n, "reading ", path);
    if (n == 0)
      throw Error(ds::str(path, " shrank while being read (", done, " of ", out.data.size(), " bytes)"));
    done += size_t(n);
  }
  out.digest = {int64_t(done), xxh64(out.data.data(), done)};
  return out;
}

bool is_temp_file_name(const std::string& name) {
  return name.find(kTempMarker) != std::string::npos || name.find(".tmp.") != std::string::npos;
}

std::vector<StaleEntry> stale_temp_files(const std::string& dir) {
  std::vector<StaleEntry> out = find_stale(dir, is_temp_file_name);
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
    if (!entry.is_directory(ec)) continue;
    for (StaleEntry& e : find_stale(entry.path().string(), is_temp_file_name)) out.push_back(std::move(e));
  }
  return out;
}

}  // namespace ds::ckpt
