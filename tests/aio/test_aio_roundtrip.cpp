// Data written by the engine comes back identical — through the engine and through a plain
// ::pread — on both backends, for many block sizes, queue depths, thread counts, submit
// modes and sizes (0, one alignment unit, not a multiple of block_size); many requests in
// flight at once; the ZeRO swap pattern; the automatic fallback to libaio.
#include <fcntl.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstddef>
#include <cstring>
#include <vector>

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

struct RoundTripCase {
  AioBackend backend;
  size_t block_size;
  unsigned queue_depth;
  unsigned threads;
  bool single_submit;
  bool overlap_events;
};

std::string case_name(const testing::TestParamInfo<RoundTripCase>& info) {
  const RoundTripCase& c = info.param;
  return ds::str(backend_name(c.backend), "_block", c.block_size / 1024, "K_qd", c.queue_depth, "_threads",
                 c.threads, c.single_submit ? "_single" : "_batched",
                 c.overlap_events ? "_overlap" : "_sequential");
}

AioOptions options_of(const RoundTripCase& c) {
  AioOptions o;
  o.backend = c.backend;
  o.block_size = c.block_size;
  o.queue_depth = c.queue_depth;
  o.intra_op_parallelism = c.threads;
  o.single_submit = c.single_submit;
  o.overlap_events = c.overlap_events;
  return o;
}

// memcmp on empty ranges, where a buffer's pointer may be null (passing null is undefined).
bool same_bytes(const void* a, const void* b, size_t bytes) {
  return bytes == 0 || std::memcmp(a, b, bytes) == 0;
}

// Reads the file with ordinary buffered I/O: a reader that shares no code with the engine.
std::vector<char> plain_read(const std::string& path, size_t bytes, off_t offset) {
  std::vector<char> data(bytes);
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  EXPECT_GE(fd, 0) << path;
  size_t done = 0;
  while (fd >= 0 && done < bytes) {
    const ssize_t n = ::pread(fd, data.data() + done, bytes - done, offset + static_cast<off_t>(done));
    if (n <= 0) break;
    done += static_cast<size_t>(n);
  }
  if (fd >= 0) ::close(fd);
  EXPECT_EQ(done, bytes) << path;
  return data;
}

class AioRoundTrip : public testing::TestWithParam<RoundTripCase> {};

TEST_P(AioRoundTrip, DataReadsBackIdenticallyThroughEngineAndPlainPread) {
  const RoundTripCase& c = GetParam();
  TempDir dir;
  AioHandle aio(options_of(c));
  ASSERT_EQ(aio.backend(), c.backend);
  const size_t sizes[] = {0, 4096, c.block_size, 3 * c.block_size + 8192, 2 * c.block_size - 4096};
  uint64_t seed = 1;
  for (size_t bytes : sizes) {
    SCOPED_TRACE(ds::str("bytes=", bytes));
    const uint64_t offset = 3 * 4096;
    AlignedBuffer out(bytes), in(bytes);
    fill_random(out.data(), bytes, ++seed);
    const std::string path = dir.file(ds::str("rt_", bytes, ".swp"));
    {
      File f(path, {OpenMode::ReadWrite});
      aio.sync_pwrite(f, out.data(), bytes, offset);
      aio.sync_pread(f, in.data(), bytes, offset);
    }
    EXPECT_TRUE(same_bytes(in.data(), out.data(), bytes));
    const std::vector<char> plain = plain_read(path, bytes, static_cast<off_t>(offset));
    EXPECT_TRUE(same_bytes(plain.data(), out.data(), bytes));
    // The path overloads open the file themselves.
    AlignedBuffer again(bytes);
    aio.sync_pread(path, again.data(), bytes, offset);
    EXPECT_TRUE(same_bytes(again.data(), out.data(), bytes));
  }
}

const RoundTripCase kCases[] = {
    {AioBackend::IoUring, 1 << 20, 8, 1, false, true},  // DeepSpeed's defaults
    {AioBackend::IoUring, 4096, 1, 1, false, true},
    {AioBackend::IoUring, 64 << 10, 4, 2, true, false},
    {AioBackend::IoUring, 128 << 10, 32, 3, false, false},
    {AioBackend::IoUring, 256 << 10, 16, 2, true, true},
    {AioBackend::Libaio, 1 << 20, 8, 1, false, true},
    {AioBackend::Libaio, 4096, 1, 1, false, true},
    {AioBackend::Libaio, 64 << 10, 4, 2, true, false},
    {AioBackend::Libaio, 128 << 10, 32, 3, false, false},
    {AioBackend::Libaio, 256 << 10, 16, 2, true, true},
};
INSTANTIATE_TEST_SUITE_P(Backends, AioRoundTrip, testing::ValuesIn(kCases), case_name);

class AioBothBackends : public testing::TestWithParam<AioBackend> {};

TEST_P(AioBothBackends, ManyConcurrentAsyncRequestsAllLandAtTheirOffsets) {
  TempDir dir;
  AioOptions o;
  o.backend = GetParam();
  o.block_size = 64 << 10;
  o.queue_depth = 4;
  o.intra_op_parallelism = 2;
  AioHandle aio(o);
  constexpr size_t kRequests = 64, kBytes = 192 << 10;
  AlignedBuffer out(kRequests * kBytes), in(kRequests * kBytes);
  fill_random(out.data(), out.size(), 42);
  File f(dir.file("many.swp"), {OpenMode::ReadWrite});
  std::vector<AioTicket> tickets;
  for (size_t i = 0; i < kRequests; ++i) {  // in reverse file order, all queued at once
    const size_t k = kRequests - 1 - i;
    tickets.push_back(aio.pwrite(f, out.bytes() + k * kBytes, kBytes, k * kBytes));
  }
  for (auto& t : tickets) t.wait();
  tickets.clear();
  for (size_t k = 0; k < kRequests; ++k)
    tickets.push_back(aio.pread(f, in.bytes() + k * kBytes, kBytes, k * kBytes));
  for (auto& t : tickets) {
    t.wait();
    EXPECT_TRUE(t.done());
    EXPECT_EQ(t.bytes(), kBytes);
  }
  EXPECT_EQ(0, std::memcmp(in.data(), out.data(), out.size()));
  const std::vector<char> plain = plain_read(f.path(), out.size(), 0);
  EXPECT_EQ(0, std::memcmp(plain.data(), out.data(), out.size()));
}

// ZeRO-Infinity's optimizer swap: read group i+1 while "computing" group i while writing
// group i-1 back, with three buffers in rotation.
TEST_P(AioBothBackends, SwapPatternReadNextComputeThisWritePrevious) {
  TempDir dir;
  AioOptions o;
  o.backend = GetParam();
  o.block_size = 256 << 10;
  AioHandle aio(o);
  constexpr size_t kGroups = 5, kBytes = 1 << 20;
  std::vector<File> files;
  for (size_t g = 0; g < kGroups; ++g) {
    files.emplace_back(dir.file(ds::str("group", g, ".swp")), FileOptions{OpenMode::ReadWrite});
    AlignedBuffer init(kBytes);
    fill_random(init.data(), kBytes, g);
    aio.sync_pwrite(files[g], init.data(), kBytes, 0);
  }
  std::vector<AlignedBuffer> buffers;
  for (int i = 0; i < 3; ++i) buffers.emplace_back(kBytes);
  AioTicket reading = aio.pread(files[0], buffers[0].data(), kBytes, 0);
  AioTicket writing;
  for (size_t g = 0; g < kGroups; ++g) {
    reading.wait();
    AioTicket next;
    if (g + 1 < kGroups) next = aio.pread(files[g + 1], buffers[(g + 1) % 3].data(), kBytes, 0);
    auto* p = reinterpret_cast<uint64_t*>(buffers[g % 3].data());
    for (size_t i = 0; i < kBytes / 8; ++i) p[i] = ~p[i];  // the "optimizer step"
    if (writing.valid()) writing.wait();
    writing = aio.pwrite(files[g], buffers[g % 3].data(), kBytes, 0);
    reading = std::move(next);
  }
  writing.wait();
  for (size_t g = 0; g < kGroups; ++g) {
    std::vector<char> expect(kBytes);
    fill_random(expect.data(), kBytes, g);
    auto* e = reinterpret_cast<uint64_t*>(expect.data());
    for (size_t i = 0; i < kBytes / 8; ++i) e[i] = ~e[i];
    EXPECT_EQ(0, std::memcmp(plain_read(files[g].path(), kBytes, 0).data(), expect.data(), kBytes)) << g;
  }
}

INSTANTIATE_TEST_SUITE_P(Backends, AioBothBackends, testing::Values(AioBackend::IoUring, AioBackend::Libaio),
                         [](const testing::TestParamInfo<AioBackend>& i) { return backend_name(i.param); });

TEST(AioHandle, ReportsTheBackendItUses) {
  AioOptions o;
  o.backend = AioBackend::Libaio;
  AioHandle forced(o);
  EXPECT_EQ(forced.backend(), AioBackend::Libaio);
  EXPECT_EQ(forced.backend_note(), "libaio");
  AioHandle automatic;
  EXPECT_NE(automatic.backend(), AioBackend::Auto);
  if (automatic.backend() == AioBackend::IoUring) {
    EXPECT_EQ(automatic.backend_note(), "io_uring");
  } else {
    EXPECT_NE(automatic.backend_note().find("io_uring unavailable"), std::string::npos);
  }
}

TEST(AioHandle, EmptyRequestsCompleteAtOnce) {
  TempDir dir;
  AioHandle aio;
  File f(dir.file("empty.swp"), {OpenMode::ReadWrite});
  AioTicket t = aio.pwrite(f, nullptr, 0, 0);
  EXPECT_TRUE(t.done());
  t.wait();
  EXPECT_EQ(f.size(), 0u);
}

#if defined(__x86_64__)
// Forbids io_uring_setup with EPERM, as container runtimes' seccomp profiles do.
bool forbid_io_uring() {
  sock_filter filter[] = {
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, arch)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, nr)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_io_uring_setup, 0, 1),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
  };
  sock_fprog program{static_cast<unsigned short>(sizeof(filter) / sizeof(filter[0])), filter};
  return ::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0 &&
         ::prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &program) == 0;
}

// In a child process whose io_uring_setup fails with EPERM: Auto falls back to libaio (and
// says why) and still moves data; an explicit IoUring request fails with a clear error.
TEST(AioHandle, FallsBackToLibaioWhenIoUringIsForbidden) {
  TempDir dir;
  const std::string path = dir.file("fallback.swp");
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    int code = 0;
    try {
      if (!forbid_io_uring()) ::_exit(10);
      AioHandle aio;
      if (aio.backend() != AioBackend::Libaio) code = 11;
      if (aio.backend_note().find("io_uring unavailable") == std::string::npos ||
          aio.backend_note().find("Operation not permitted") == std::string::npos) {
        code = 12;
      }
      AlignedBuffer out(1 << 20), in(1 << 20);
      fill_random(out.data(), out.size(), 7);
      aio.sync_pwrite(path, out.data(), out.size(), 0);
      aio.sync_pread(path, in.data(), in.size(), 0);
      if (std::memcmp(in.data(), out.data(), out.size()) != 0) code = 13;
      AioOptions only_uring;
      only_uring.backend = AioBackend::IoUring;
      const std::string e = ds::test::error_of([&] { AioHandle h(only_uring); });
      if (e.find("io_uring is not available") == std::string::npos) code = 14;
    } catch (...) {
      code = 15;
    }
    ::_exit(code);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  if (WEXITSTATUS(status) == 10) GTEST_SKIP() << "could not install a seccomp filter";
  EXPECT_EQ(WEXITSTATUS(status), 0) << "child failed check " << WEXITSTATUS(status) << " (see the test body)";
}
#endif

}  // namespace
}  // namespace ds::aio
