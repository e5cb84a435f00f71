// Every failure is an exception that names the file, the offset and the size: ENOSPC on a
// full filesystem, end of file, misaligned O_DIRECT arguments, missing paths, filesystems
// that refuse O_DIRECT, bad options; and check_swap_path's pre-flight errors.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include <gtest/gtest.h>

#include "aio_test_support.h"
#include "ds/aio/buffer.h"
#include "ds/aio/file.h"
#include "ds/aio/handle.h"
#include "support/errors.h"

namespace ds::aio {
namespace {

using test::fill_random;
using test::TempDir;
using test::TestMount;

AioOptions with_backend(AioBackend b) {
  AioOptions o;
  o.backend = b;
  return o;
}

class AioErrors : public testing::TestWithParam<AioBackend> {};

// Writing 16 MiB into an 8 MiB ext4 filesystem: an IoError with ENOSPC that names the file
// and the offset, raised only after the requests in flight have completed.
TEST_P(AioErrors, FullFilesystemGivesEnospcNamingFileAndOffset) {
  TempDir dir;
  TestMount mount;
  if (auto why = mount.mount_ext4_image(dir.path(), 8)) GTEST_SKIP() << *why;
  AioHandle aio(with_backend(GetParam()));
  const std::string path = mount.path() + "/opt_state.swp";
  AlignedBuffer buf(16 << 20);
  fill_random(buf.data(), buf.size(), 3);
  File f(path, {OpenMode::Write});
  try {
    aio.sync_pwrite(f, buf.data(), buf.size(), 0);
    FAIL() << "writing 16 MiB into an 8 MiB filesystem succeeded";
  } catch (const IoError& e) {
    const std::string m = e.what();
    EXPECT_EQ(e.error_number(), ENOSPC) << m;
    EXPECT_NE(m.find("writing " + path + " at offset "), std::string::npos) << m;
    EXPECT_NE(m.find("No space left on device"), std::string::npos) << m;
  }
}

TEST_P(AioErrors, ReadingPastTheEndOfTheFileIsAnError) {
  TempDir dir;
  AioHandle aio(with_backend(GetParam()));
  const std::string path = dir.file("short.swp");
  AlignedBuffer buf(16384);
  fill_random(buf.data(), buf.size(), 4);
  aio.sync_pwrite(path, buf.data(), 8192, 0);
  EXPECT_ERROR_HAS(aio.sync_pread(path, buf.data(), 16384, 0), "unexpected end of file");
  EXPECT_ERROR_HAS(aio.sync_pread(path, buf.data(), 16384, 0), "reading " + path + " at offset 8192");
}

TEST_P(AioErrors, MisalignedBufferOffsetOrSizeIsRefusedBeforeSubmitting) {
  TempDir dir;
  AioHandle aio(with_backend(GetParam()));
  File f(dir.file("align.swp"), {OpenMode::ReadWrite});
  ASSERT_GT(f.alignment(), 1u);
  AlignedBuffer buf(1 << 20);
  EXPECT_ERROR_HAS(aio.sync_pwrite(f, buf.bytes() + 1, 4096, 0), "not aligned: buffer address");
  EXPECT_ERROR_HAS(aio.sync_pwrite(f, buf.data(), 4096, 100), "not aligned: offset 100");
  EXPECT_ERROR_HAS(aio.sync_pread(f, buf.data(), 1000, 0), "not aligned: size 1000");
  EXPECT_ERROR_HAS(aio.sync_pread(f, buf.data(), 1000, 0), "reading " + f.path() + " at offset 0");
  EXPECT_ERROR_HAS(aio.sync_pread(f, buf.data(), 1000, 0), "multiples of " + std::to_string(f.alignment()));
  EXPECT_EQ(f.size(), 0u) << "nothing may reach the file";
}

INSTANTIATE_TEST_SUITE_P(Backends, AioErrors, testing::Values(AioBackend::IoUring, AioBackend::Libaio),
                         [](const testing::TestParamInfo<AioBackend>& i) { return backend_name(i.param); });

TEST(AioErrors, MissingPathIsNamed) {
  TempDir dir;
  AioHandle aio;
  AlignedBuffer buf(4096);
  const std::string missing = dir.file("no/such.swp");
  EXPECT_ERROR_HAS(aio.sync_pread(missing, buf.data(), 4096, 0),
                   "opening " + missing + " for reading: No such file or directory");
  EXPECT_ERROR_HAS(aio.sync_pwrite(missing, buf.data(), 4096, 0), "opening " + missing + " for writing");
  EXPECT_ERROR_HAS(File(missing, {OpenMode::Read}), missing);
}

TEST(AioErrors, WrongOpenModeIsRefused) {
  TempDir dir;
  AioHandle aio;
  AlignedBuffer buf(4096);
  File w(dir.file("w.swp"), {OpenMode::Write});
  EXPECT_ERROR_HAS(aio.sync_pread(w, buf.data(), 4096, 0), "opened for writing only");
  File r(dir.file("w.swp"), {OpenMode::Read});
  EXPECT_ERROR_HAS(aio.sync_pwrite(r, buf.data(), 4096, 0), "opened for reading only");
  EXPECT_ERROR_HAS(aio.sync_pwrite(File(), buf.data(), 4096, 0), "not open");
}

TEST(AioErrors, FilesystemWithoutODirectIsNamedAndLeavesNoFile) {
  TempDir dir;
  TestMount mount;
  if (auto why = mount.mount_virtual(dir.path(), "ramfs", "")) GTEST_SKIP() << *why;
  const std::string path = mount.path() + "/x.swp";
  EXPECT_ERROR_HAS(File(path, {OpenMode::Write}),
                   "cannot open " + path + " with O_DIRECT: the ramfs filesystem");
  EXPECT_FALSE(std::filesystem::exists(path));
  File buffered(path, {OpenMode::Write, /*direct=*/false});  // without O_DIRECT it opens
  EXPECT_EQ(buffered.alignment(), 1u);
}

TEST(AioErrors, InvalidOptionsNameTheField) {
  AioOptions o;
  o.block_size = 1000;
  EXPECT_ERROR_HAS(AioHandle h(o), "aio.block_size: expected a multiple of 4096");
  o = AioOptions{};
  o.block_size = 0;
  EXPECT_ERROR_HAS(o.validate(), "got 0");
  o = AioOptions{};
  o.queue_depth = 0;
  EXPECT_ERROR_HAS(o.validate(), "aio.queue_depth");
  o = AioOptions{};
  o.intra_op_parallelism = 0;
  EXPECT_ERROR_HAS(o.validate(), "aio.intra_op_parallelism");
  EXPECT_ERROR_HAS(parse_backend("uring"), "expected auto, io_uring or libaio, got \"uring\"");
  EXPECT_EQ(parse_backend("libaio"), AioBackend::Libaio);
}

TEST(AioErrors, UnwaitedErrorIsPrintedNotLost) {
  TempDir dir;
  AioHandle aio;
  AlignedBuffer buf(16384);
  const std::string path = dir.file("unwaited.swp");
  aio.sync_pwrite(path, buf.data(), 4096, 0);
  testing::internal::CaptureStderr();
  { AioTicket dropped = aio.pread(path, buf.data(), 16384, 0); }
  const std::string err = testing::internal::GetCapturedStderr();
  EXPECT_NE(err.find("nobody waited for"), std::string::npos) << err;
  EXPECT_NE(err.find("unexpected end of file"), std::string::npos) << err;
  AioTicket empty;
  EXPECT_ERROR_HAS(empty.wait(), "empty AioTicket");
}

// ---- check_swap_path ----

TEST(CheckSwapPath, AcceptsAWritableDirectoryWithSpaceAndODirect) {
  TempDir dir;
  const SwapPathInfo info = check_swap_path(dir.path(), 1 << 20);
  EXPECT_GE(info.free_bytes, 1u << 20);
  EXPECT_GT(info.alignment, 0u);
  EXPECT_FALSE(info.filesystem.empty());
  EXPECT_TRUE(std::filesystem::is_empty(dir.path())) << "the probe file must be removed";
}

TEST(CheckSwapPath, MissingPathOrRegularFileIsNamedWithTheBytesNeeded) {
  TempDir dir;
  const std::string missing = dir.file("nvme");
  EXPECT_ERROR_HAS(check_swap_path(missing, 1 << 30), "swap path " + missing + " does not exist");
  EXPECT_ERROR_HAS(check_swap_path(missing, 1 << 30), "1.00 GiB (1073741824 bytes)");
  const std::string file = dir.file("plain");
  { File f(file, {OpenMode::Write}); }
  EXPECT_ERROR_HAS(check_swap_path(file, 1 << 30), "swap path " + file + " is not a directory");
}

TEST(CheckSwapPath, TooLittleFreeSpaceSaysHowMuchIsFreeAndNeeded) {
  TempDir dir;
  const uint64_t petabyte = uint64_t{1} << 50;
  EXPECT_ERROR_HAS(check_swap_path(dir.path(), petabyte), "free; ZeRO-Infinity needs 1024.00 TiB");
}

TEST(CheckSwapPath, ReadOnlyFilesystemIsNotWritable) {
  TempDir dir;
  TestMount mount;
  if (auto why = mount.mount_virtual(dir.path(), "tmpfs", "ro,size=1m")) GTEST_SKIP() << *why;
  EXPECT_ERROR_HAS(check_swap_path(mount.path(), 4096), "swap path " + mount.path() + " is not writable");
}

TEST(CheckSwapPath, FilesystemRefusingODirectIsNamed) {
  TempDir dir;
  TestMount mount;
  if (auto why = mount.mount_virtual(dir.path(), "ramfs", "")) GTEST_SKIP() << *why;
  EXPECT_ERROR_HAS(check_swap_path(mount.path(), 4096),
                   "swap path " + mount.path() + " (ramfs) refuses O_DIRECT");
  EXPECT_TRUE(std::filesystem::is_empty(mount.path())) << "the probe file must be removed";
}

}  // namespace
}  // namespace ds::aio
