#include "pt_check.h"

#include <cstdint>
#include <cstring>
#include <vector>

#include "ds/common/error.h"
#include "ds/common/strings.h"

namespace ds::ckpt::detail {

namespace {

constexpr uint32_t kLocalSig = 0x04034b50, kCentralSig = 0x02014b50, kEndSig = 0x06054b50;
constexpr uint32_t kEnd64Sig = 0x06064b50, kLocator64Sig = 0x07064b50;
constexpr size_t kLocalBytes = 30, kCentralBytes = 46, kEndBytes = 22, kEnd64Bytes = 56, kLocator64Bytes = 20;

// Little-endian reads at an offset the caller has checked.
class Bytes {
 public:
  Bytes(const char* data, size_t size, const std::string& path) : p_(reinterpret_cast<const unsigned char*>(data)), size_(size), path_(path) {}
  uint64_t le(uint64_t at, int n) const {
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; --i) v = (v << 8) | p_[at + uint64_t(i)];
    return v;
  }
  uint16_t u16(uint64_t at) const { return uint16_t(le(at, 2)); }
  uint32_t u32(uint64_t at) const { return uint32_t(le(at, 4)); }
  uint64_t u64(uint64_t at) const { return le(at, 8); }
  uint8_t u8(uint64_t at) const { return p_[at]; }
  std::string text(uint64_t at, uint64_t n) const { return std::string(reinterpret_cast<const char*>(p_ + at), n); }
  uint64_t size() const { return size_; }
  // [at, at + n) inside [0, limit], without overflow.
  void need(uint64_t at, uint64_t n, uint64_t limit, const char* what) const {
    if (at > limit || n > limit - at)
      fail(ds::str(what, " at byte ", at, " (", n, " bytes) lies outside the ", limit == size_ ? "file" : "archive's data"));
  }
  [[noreturn]] void fail(const std::string& what) const {
    throw Error(ds::str("checkpoint file ", path_, " is not a readable .pt (zip) file: ", what,
                        "; it is truncated or damaged (", size_, " bytes)"));
  }

 private:
  const unsigned char* p_;
  uint64_t size_;
  const std::string& path_;
};

struct Entry {
  std::string name;
  uint64_t data = 0, size = 0;
  uint16_t method = 0;  // 0: stored
};

struct Directory {
  uint64_t entries = 0, offset = 0, size = 0;
  uint64_t end = 0;  // where the end records begin: the directory and the data lie before it
};

Directory find_directory(const Bytes& b) {
  if (b.size() < kEndBytes) b.fail("too short for a zip archive");
  // The end record is the last thing in the file, followed by a comment of at most 64 KiB.
  const uint64_t lowest = b.size() - kEndBytes > 0xFFFF ? b.size() - kEndBytes - 0xFFFF : 0;
  uint64_t at = b.size() - kEndBytes;
  while (!(b.u32(at) == kEndSig && at + kEndBytes + b.u16(at + 20) == b.size())) {
    if (at == lowest) b.fail("no end-of-central-directory record");
    --at;
  }
  Directory d{b.u16(at + 10), b.u32(at + 16), b.u32(at + 12), at};
  if (at >= kLocator64Bytes && b.u32(at - kLocator64Bytes) == kLocator64Sig) {
    const uint64_t end64 = b.u64(at - kLocator64Bytes + 8);
    b.need(end64, kEnd64Bytes, at - kLocator64Bytes, "the zip64 end record");
    if (b.u32(end64) != kEnd64Sig) b.fail(ds::str("no zip64 end record at byte ", end64));
    d = {b.u64(end64 + 32), b.u64(end64 + 48), b.u64(end64 + 40), end64};
  } else if (d.entries == 0xFFFF || d.offset == 0xFFFFFFFF || d.size == 0xFFFFFFFF) {
    b.fail("the end record asks for zip64 values but there is no zip64 end record");
  }
  b.need(d.offset, d.size, d.end, "the central directory");
  return d;
}

std::vector<Entry> zip_entries(const Bytes& b) {
  const Directory d = find_directory(b);
  std::vector<Entry> out;
  const uint64_t dir_end = d.offset + d.size;
  uint64_t at = d.offset;
  for (uint64_t e = 0; e < d.entries; ++e) {
    b.need(at, kCentralBytes, dir_end, "a central directory entry");
    if (b.u32(at) != kCentralSig) b.fail(ds::str("central directory entry ", e, " has no signature"));
    uint64_t packed = b.u32(at + 20), unpacked = b.u32(at + 24), local = b.u32(at + 42);
    const uint64_t name = b.u16(at + 28), extra = b.u16(at + 30), comment = b.u16(at + 32);
    b.need(at + kCentralBytes, name + extra + comment, dir_end, "a central directory entry's name and extra fields");
    // zip64 sizes and offset, in that order, for the fields saturated at 0xFFFFFFFF.
    for (uint64_t x = at + kCentralBytes + name, x_end = x + extra; x + 4 <= x_end;) {
      const uint16_t id = b.u16(x), len = b.u16(x + 2);
      b.need(x + 4, len, x_end, "an extra field");
      uint64_t field = x + 4;
      if (id == 0x0001) {
        for (uint64_t* v : {&unpacked, &packed, &local}) {
          if (*v != 0xFFFFFFFF) continue;
          b.need(field, 8, x + 4 + len, "a zip64 extra field");
          *v = b.u64(field);
          field += 8;
        }
      }
      x += 4 + len;
    }
    b.need(local, kLocalBytes, d.offset, ds::str("the local header of entry ", e).c_str());
    if (b.u32(local) != kLocalSig) b.fail(ds::str("entry ", e, " has no local header at byte ", local));
    const uint64_t data_at = local + kLocalBytes + b.u16(local + 26) + b.u16(local + 28);
    b.need(data_at, packed, d.offset, ds::str("the data of entry ", e).c_str());
    // A stored entry's two sizes are one; LibTorch copies the unpacked size out of the buffer.
    if (b.u16(at + 10) == 0 && unpacked != packed)
      b.fail(ds::str("stored entry ", e, " claims ", unpacked, " bytes unpacked but holds ", packed));
    out.push_back({b.text(at + kCentralBytes, name), data_at, packed, b.u16(at + 10)});
    at += kCentralBytes + name + extra + comment;
  }
  return out;
}

// The pickle program's instructions, walked (not run) to check every length-prefixed argument
// against the bytes that follow it. Opcodes and their argument layouts: Python's pickletools.
// An opcode the walk does not know ends the walk: LibTorch's unpickler refuses it anyway.
void check_pickle_lengths(const Bytes& b, const Entry& e) {
  const uint64_t end = e.data + e.size;
  uint64_t at = e.data;
  auto fail = [&](uint64_t op_at, const std::string& what) {
    b.fail(ds::str("the pickle program ", e.name, " ", what, " at its byte ", op_at - e.data));
  };
  auto line = [&](uint64_t op_at) {  // an argument ended by a newline
    while (at < end && b.u8(at) != '\n') ++at;
    if (at == end) fail(op_at, "ends inside a text argument");
    ++at;
  };
  while (at < end) {
    const uint64_t op_at = at;
    const uint8_t op = b.u8(at++);
    int fixed = -1, prefix = 0;  // a fixed-size argument, or the width of a length prefix
    switch (op) {
      case 0x80: case 'K': case 'q': case 'h': case 0x82: fixed = 1; break;   // PROTO BININT1 BINPUT BINGET EXT1
      case 'M': case 0x83: fixed = 2; break;                                  // BININT2 EXT2
      case 'J': case 'r': case 'j': case 0x84: fixed = 4; break;              // BININT LONG_BINPUT LONG_BINGET EXT4
      case 'G': case 0x95: fixed = 8; break;                                  // BINFLOAT FRAME
      case 0x8a: case 'U': case 'C': case 0x8c: prefix = 1; break;            // LONG1 SHORT_BIN{STRING,BYTES,UNICODE}
      case 0x8b: case 'T': case 'B': case 'X': prefix = 4; break;             // LONG4 BINSTRING BINBYTES BINUNICODE
      case 0x8e: case 0x8d: case 0x96: prefix = 8; break;                     // BINBYTES8 BINUNICODE8 BYTEARRAY8
      case 'I': case 'L': case 'F': case 'S': case 'V': case 'P': case 'p': case 'g': line(op_at); continue;
      case 'c': case 'i': line(op_at), line(op_at); continue;                 // GLOBAL INST: module, name
      case '.': return;                                                       // STOP
      case '(': case '0': case '1': case '2': case 'N': case ')': case ']': case '}': case 'a': case 'b': case 'd':
      case 'e': case 'l': case 'o': case 's': case 't': case 'u': case 'R': case 'Q': case 0x81: case 0x92: case 0x85:
      case 0x86: case 0x87: case 0x88: case 0x89: case 0x8f: case 0x90: case 0x91: case 0x93: case 0x94: case 0x97:
      case 0x98: continue;                                                    // no argument
      default: return;
    }
    if (fixed > 0) {
      if (uint64_t(fixed) > end - at) fail(op_at, "ends inside an instruction");
      // LibTorch sizes its memo table by the largest index: a program of n bytes stores at
      // most n/2 values, so a larger index is damage, not data (found by fuzzing: 6 GB).
      if ((op == 'q' || op == 'r' || op == 'h' || op == 'j') && b.le(at, fixed) > e.size)
        fail(op_at, ds::str("uses memo index ", b.le(at, fixed), ", more than its ", e.size, " bytes can hold"));
      at += uint64_t(fixed);
      continue;
    }
    if (uint64_t(prefix) > end - at) fail(op_at, "ends inside a length");
    const uint64_t length = b.le(at, prefix);
    at += uint64_t(prefix);
    if (length > end - at)
      fail(op_at, ds::str("declares a ", length, "-byte argument but only ", end - at, " bytes follow"));
    at += length;
  }
}

}  // namespace

void check_pt_bounds(const char* data, size_t size, const std::string& path) {
  const Bytes b(data, size, path);
  for (const Entry& e : zip_entries(b)) {
    const bool program = e.name.size() >= 8 && e.name.compare(e.name.size() - 8, 8, "data.pkl") == 0;
    if (program && e.method == 0) check_pickle_lengths(b, e);
  }
}

}  // namespace ds::ckpt::detail
