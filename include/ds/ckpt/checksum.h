// Checksums of checkpoint files: xxHash64 (XXH64), streamed, implemented from its published
// specification. Fast enough (several GB/s) to hash every byte we write and read.
//
//   ds::ckpt::Xxh64 h;
//   h.update(buf, n);  h.update(more, m);        // same result as one call over both
//   std::string hex = ds::ckpt::to_hex(h.digest());   // "ef46db3751d8e999" for no input
//   uint64_t one_shot = ds::ckpt::xxh64(buf, n);
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>

namespace ds::ckpt {

class Xxh64 {
 public:
  explicit Xxh64(uint64_t seed = 0);
  void update(const void* data, size_t size);
  // The hash of everything passed to update() so far; the object can keep going.
  uint64_t digest() const;

 private:
  uint64_t seed_;
  uint64_t acc_[4];
  uint64_t total_ = 0;
  unsigned char pending_[32];
  size_t pending_size_ = 0;
};

uint64_t xxh64(const void* data, size_t size, uint64_t seed = 0);

// 16 lowercase hex digits, most significant first (as xxhsum prints it).
std::string to_hex(uint64_t value);
// The inverse of to_hex; nullopt unless exactly 16 hex digits.
std::optional<uint64_t> parse_hex64(const std::string& text);

}  // namespace ds::ckpt
