// xxh64 against published vectors, streaming, atomic writes and what a crash leaves behind.
#include <gtest/gtest.h>
#include <signal.h>

#include <filesystem>
#include <sys/wait.h>
#include <unistd.h>

#include <random>

#include "ckpt_test_util.h"
#include "ds/ckpt/atomic_file.h"
#include "ds/ckpt/checksum.h"
#include "support/errors.h"

namespace ds::ckpt {
namespace {

using test::TempDir;

uint64_t hash_of(const std::string& s) { return xxh64(s.data(), s.size()); }

TEST(Xxh64, MatchesPublishedVectors) {
  EXPECT_EQ(hash_of(""), 0xef46db3751d8e999ULL);
  EXPECT_EQ(hash_of("a"), 0xd24ec4f1a98c6e5bULL);
  EXPECT_EQ(hash_of("abc"), 0x44bc2cf5ad770999ULL);
  EXPECT_EQ(hash_of("foo"), 0x33bf00a859c4ba3fULL);
  EXPECT_EQ(hash_of("bar"), 0x48a37c90ad27a659ULL);
  EXPECT_EQ(hash_of("abcdefghijklmnopqrstuvwxyz12345"), 0x467605901b01d6f6ULL);  // 31 bytes: no stripe
  EXPECT_EQ(hash_of("0123456789abcdefghijklmnopqrstuvwxyz"),
            0x69196c1b3af0bff9ULL);                            // a 32-byte stripe + tail
  EXPECT_EQ(xxh64("a", 1, 191961062), 0x6e05ba2887c97977ULL);  // seeded
}

TEST(Xxh64, StreamingGivesTheOneShotHashForEverySplit) {
  std::mt19937 rng(1);
  std::string data(1000, '\0');
  for (auto& c : data) c = char(rng());
  for (size_t total : {0, 1, 31, 32, 33, 64, 100, 1000}) {
    uint64_t want = xxh64(data.data(), total);
    for (size_t step = 1; step <= 70; ++step) {
      Xxh64 h;
      for (size_t at = 0; at < total; at += step) h.update(data.data() + at, std::min(step, total - at));
      ASSERT_EQ(h.digest(), want) << "total " << total << " step " << step;
    }
  }
}

// Found by UBSan: an empty tensor's data pointer is null, and update() passed it to memcpy.
TEST(Xxh64, EmptyUpdatesFromNullChangeNothing) {
  Xxh64 h;
  h.update(nullptr, 0);
  h.update("abc", 3);
  h.update(nullptr, 0);
  EXPECT_EQ(h.digest(), xxh64("abc", 3));
}

TEST(Xxh64, HexRoundTripAndRejectsBadText) {
  EXPECT_EQ(to_hex(0xef46db3751d8e999ULL), "ef46db3751d8e999");
  EXPECT_EQ(to_hex(1), "0000000000000001");
  EXPECT_EQ(parse_hex64("EF46DB3751D8E999"), 0xef46db3751d8e999ULL);
  EXPECT_FALSE(parse_hex64("ef46db3751d8e99"));
  EXPECT_FALSE(parse_hex64("ef46db3751d8e99g"));
  EXPECT_FALSE(parse_hex64("0xef46db3751d8e9"));
}

TEST(AtomicFile, CommitReplacesTheFileAndReportsSizeAndChecksum) {
  TempDir dir;
  std::string path = dir.path() + "/f.bin";
  test::spit(path, "old");
  std::string text(3 << 20, 'x');  // larger than the write buffer
  text[12345] = 'y';
  AtomicFile f(path);
  f.write(text.data(), 10);
  f.write(text.data() + 10, text.size() - 10);
  EXPECT_EQ(test::slurp(path), "old");  // nothing visible before commit
  FileDigest d = f.commit();
  EXPECT_EQ(d.bytes, int64_t(text.size()));
  EXPECT_EQ(d.xxh64, xxh64(text.data(), text.size()));
  EXPECT_EQ(test::slurp(path), text);
  EXPECT_FALSE(file_size(f.temp_path()));
  FileContents back = read_file(path);
  EXPECT_EQ(back.digest.xxh64, d.xxh64);
}

TEST(AtomicFile, WithoutCommitTheOldFileStaysAndTheTempFileGoes) {
  TempDir dir;
  std::string path = dir.path() + "/f.bin", temp;
  test::spit(path, "old");
  {
    AtomicFile f(path);
    temp = f.temp_path();
    f.write("new", 3);
    EXPECT_TRUE(file_size(temp));
  }
  EXPECT_EQ(test::slurp(path), "old");
  EXPECT_FALSE(file_size(temp));
}

TEST(AtomicFile, AProcessKilledMidWriteLeavesTheOldFileIntact) {
  TempDir dir;
  std::string path = dir.path() + "/f.bin";
  test::spit(path, "old content");
  pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    AtomicFile f(path);
    std::string big(4 << 20, 'n');
    f.write(big.data(), big.size());  // reaches the disk (beyond the buffer) ...
    ::_exit(0);                       // ... and the process dies before commit()
  }
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  EXPECT_EQ(test::slurp(path), "old content");
  // The crash leaves the temp file behind (readers never look at it); its name says whose it
  // was, so the next save (or ds-ckpt inspect) knows its writer is gone.
  auto stale = stale_temp_files(dir.path());
  ASSERT_EQ(stale.size(), 1u);
  EXPECT_EQ(stale[0].pid, long(child));
  EXPECT_EQ(stale[0].path.rfind(path + ".tmp@", 0), 0u) << stale[0].path;
  EXPECT_EQ(file_size(stale[0].path).value_or(0), 4 << 20);
}

TEST(AtomicFile, TempFilesGoOnTheSignalsThatEndARun) {
  // SIGTERM (a launcher stopping the ranks) and SIGINT remove the temp file of a save in
  // progress; the process still dies of the signal.
  for (int sig : {SIGTERM, SIGINT}) {
    TempDir dir;
    const std::string path = dir.path() + "/f.bin";
    pid_t child = ::fork();
    ASSERT_GE(child, 0);
    if (child == 0) {
      AtomicFile f(path);
      f.write("partial", 7);
      ::raise(sig);
      ::_exit(0);
    }
    int status = 0;
    ASSERT_EQ(::waitpid(child, &status, 0), child);
    EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == sig) << status;
    int left = 0;
    for (const auto& e : std::filesystem::directory_iterator(dir.path())) ++left, ADD_FAILURE() << "left: " << e.path();
    EXPECT_EQ(left, 0);
  }
}

TEST(AtomicFile, ErrorsNameThePath) {
  EXPECT_ERROR_HAS(AtomicFile("/nonexistent_dir_ds/x"), "cannot create /nonexistent_dir_ds/x.tmp@");
  EXPECT_ERROR_HAS(read_file("/nonexistent_dir_ds/x"), "cannot open /nonexistent_dir_ds/x");
}

TEST(Directories, MakeDirectoriesCreatesEveryLevelAndIsIdempotent) {
  TempDir dir;
  std::string deep = dir.path() + "/a/b/c";
  make_directories(deep);
  make_directories(deep);
  EXPECT_TRUE(is_directory(deep));
  EXPECT_EQ(parent_directory(deep), dir.path() + "/a/b");
  EXPECT_EQ(parent_directory("name"), ".");
  EXPECT_FALSE(remove_file_durably(deep + "/none"));
  test::spit(deep + "/f", "x");
  EXPECT_TRUE(remove_file_durably(deep + "/f"));
}

}  // namespace
}  // namespace ds::ckpt
