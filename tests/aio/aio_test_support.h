// Test helpers for ds_aio: a temporary directory under /tmp, filesystems the test mounts
// itself (a loop-mounted ext4 image, ramfs, a read-only tmpfs), and data patterns.
#pragma once

#include <sys/mount.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <optional>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "support/files.h"

namespace ds::aio::test {

// Under /tmp: a disk filesystem that accepts O_DIRECT.
class TempDir : public ds::test::TempDir {
 public:
  TempDir() : ds::test::TempDir("ds_aio_test", "/tmp") {}
};


// A filesystem mounted by the test on a directory; unmounted (lazily if busy) on destruction.
// mount() returns a reason when it cannot (not root, no loop devices, no mkfs.ext4).
class TestMount {
 public:
  ~TestMount() { unmount(); }
  TestMount() = default;
  TestMount(const TestMount&) = delete;
  TestMount& operator=(const TestMount&) = delete;

  // An ext4 image of `megabytes` MiB at <dir>/fs.img, loop-mounted on <dir>/mnt.
  std::optional<std::string> mount_ext4_image(const std::string& dir, int megabytes) {
    if (::geteuid() != 0) return std::string("needs root to loop-mount an ext4 image");
    const std::string image = dir + "/fs.img";
    mount_point_ = dir + "/mnt";
    std::filesystem::create_directory(mount_point_);
    const std::string cmd = "PATH=$PATH:/usr/sbin:/sbin; truncate -s " + std::to_string(megabytes) + "M " +
                            image + " && mkfs.ext4 -q -F " + image + " >/dev/null 2>&1 && mount -o loop " +
                            image + " " + mount_point_ + " 2>/dev/null";
    if (std::system(cmd.c_str()) != 0) {
      mount_point_.clear();
      return std::string("could not create and loop-mount an ext4 image (needs e2fsprogs and a loop device)");
    }
    return std::nullopt;
  }

  // A filesystem without an image: `type` "ramfs" or "tmpfs", with mount `options`.
  std::optional<std::string> mount_virtual(const std::string& dir, const char* type, const char* options) {
    if (::geteuid() != 0) return std::string("needs root to mount ") + type;
    mount_point_ = dir + "/" + type;
    std::filesystem::create_directory(mount_point_);
    unsigned long flags = 0;
    std::string data = options;
    if (data.rfind("ro", 0) == 0) {
      flags |= MS_RDONLY;
      data = data.size() > 3 ? data.substr(3) : "";
    }
    if (::mount(type, mount_point_.c_str(), type, flags, data.c_str()) != 0) {
      mount_point_.clear();
      return std::string("could not mount ") + type;
    }
    return std::nullopt;
  }

  const std::string& path() const { return mount_point_; }

  void unmount() {
    if (mount_point_.empty()) return;
    if (::umount2(mount_point_.c_str(), 0) != 0) ::umount2(mount_point_.c_str(), MNT_DETACH);
    mount_point_.clear();
  }

 private:
  std::string mount_point_;
};

// Deterministic pseudo-random bytes, different for every seed.
inline void fill_random(void* data, size_t bytes, uint64_t seed) {
  std::mt19937_64 rng(seed);
  auto* p = static_cast<unsigned char*>(data);
  size_t i = 0;
  for (; i + 8 <= bytes; i += 8) {
    const uint64_t v = rng();
    std::memcpy(p + i, &v, 8);
  }
  for (; i < bytes; ++i) p[i] = static_cast<unsigned char>(rng());
}

}  // namespace ds::aio::test
