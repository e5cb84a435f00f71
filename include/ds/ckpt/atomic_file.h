// Crash-safe file writes and checked whole-file reads for checkpoints.
//
// A file is written as <path>.tmp@<host>@<pid>, fsync'ed, renamed onto <path>, and then the
// directory is fsync'ed, so after a crash (process or machine) <path> is either the old
// file, or the complete new one -- never a prefix. The temp file is removed when the write is
// abandoned, also on the signals that end a run (ds::CleanupScope); one a killed process left
// is recognised by its owner tag (stale_temp_files). Every byte is hashed (xxh64) on the way
// out, so the writer learns the checksum the manifest records without reading the file back.
//
//   ds::ckpt::AtomicFile f("/ckpt/global_step10/manifest.json");
//   f.write(text.data(), text.size());
//   ds::ckpt::FileDigest d = f.commit();          // without commit(), the temp file is removed
//   auto [bytes, digest] = ds::ckpt::read_file("/ckpt/global_step10/manifest.json");
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "ds/ckpt/checksum.h"
#include "ds/common/cleanup.h"

namespace ds::ckpt {

struct FileDigest {
  int64_t bytes = 0;
  uint64_t xxh64 = 0;
};

class AtomicFile {
 public:
  // Creates (truncates) the temporary file next to `path`; the directory must exist.
  explicit AtomicFile(std::string path);
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;
  // Without a commit(), closes and removes the temporary file: `path` is untouched.
  ~AtomicFile();

  void write(const void* data, size_t size);
  // Flushes, fsyncs, renames onto path(), fsyncs the directory. Returns size and checksum.
  FileDigest commit();

  const std::string& path() const { return path_; }
  const std::string& temp_path() const { return temp_path_; }
  int64_t bytes_written() const { return bytes_; }

 private:
  void flush();
  void write_fully(const char* data, size_t size);

  std::string path_, temp_path_;
  int fd_ = -1;
  Xxh64 hash_;
  int64_t bytes_ = 0;
  std::vector<char> buffer_;  // coalesces the many small writes of a zip/pickle stream
  bool committed_ = false;
  CleanupScope cleanup_;
};

// What temp files' names contain: "<path>.tmp@<host>@<pid>" (older versions: ".tmp.<pid>").
constexpr const char* kTempMarker = ".tmp@";
bool is_temp_file_name(const std::string& name);
// Temp files under `dir` and its sub-directories (one level: the tags) whose writer, a
// process of this host, is gone: what saves killed by SIGKILL left.
std::vector<StaleEntry> stale_temp_files(const std::string& dir);

// Fault injection, for tests only: called by every commit() once the temporary file holds all
// its data, before it is synced and renamed (a test's hook may kill the process there, to
// crash a save at an exact point). Null in every other program.
using CommitHook = void (*)(const std::string& path);
void set_commit_hook_for_testing(CommitHook hook);

FileDigest write_file_atomic(const std::string& path, const void* data, size_t size);
FileDigest write_file_atomic(const std::string& path, const std::string& text);

// fsync() on a directory, which makes renames and new entries in it durable.
void fsync_directory(const std::string& dir);
// mkdir -p; fsyncs the parent of every directory it creates.
void make_directories(const std::string& dir);
// Removes `path` (a file) if it exists and fsyncs its directory; returns whether it existed.
bool remove_file_durably(const std::string& path);

// Size of a regular file, nullopt if there is no such file (other failures throw).
std::optional<int64_t> file_size(const std::string& path);
bool is_directory(const std::string& path);
// The directory part of a path ("." for a bare name).
std::string parent_directory(const std::string& path);

struct FileContents {
  std::vector<char> data;
  FileDigest digest;
};
// Reads a whole regular file and hashes it. Throws ds::SystemError naming the file.
FileContents read_file(const std::string& path);

}  // namespace ds::ckpt
