#include "ds/ckpt/safetensors.h"

#include <ATen/ATen.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>

#include "bounded_json.h"
#include "ds/common/error.h"

namespace ds::ckpt {

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "safetensors data is little-endian");

namespace {

constexpr uint64_t kMaxHeaderBytes = 100'000'000;  // the reference implementation's limit

struct DtypeName {
  at::ScalarType type;
  const char* name;
};
constexpr DtypeName kDtypes[] = {
    {at::kFloat, "F32"}, {at::kBFloat16, "BF16"}, {at::kHalf, "F16"},  {at::kDouble, "F64"},
    {at::kLong, "I64"},  {at::kInt, "I32"},       {at::kShort, "I16"}, {at::kChar, "I8"},
    {at::kByte, "U8"},   {at::kBool, "BOOL"},
};

}  // namespace

std::string safetensors_dtype(at::ScalarType t) {
  for (const auto& d : kDtypes)
    if (d.type == t) return d.name;
  throw Error(ds::str("safetensors has no dtype for ", t));
}

at::ScalarType scalar_type_from_safetensors(const std::string& dtype) {
  for (const auto& d : kDtypes)
    if (dtype == d.name) return d.type;
  throw Error(ds::str("unsupported safetensors dtype \"", dtype, "\""));
}

FileDigest write_safetensors(const std::string& path,
                             const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                             const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::vector<at::Tensor> data;
  int64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    if (name.empty() || name == "__metadata__" || header.contains(name))
      throw Error(ds::str(path, ": tensor name \"", name, "\" is empty, reserved or repeated"));
    if (!t.defined() || !t.device().is_cpu() || t.is_sparse())
      throw Error(ds::str(path, ": tensor ", name, " must be a dense CPU tensor"));
    data.push_back(t.contiguous());
    int64_t bytes = t.numel() * int64_t(t.element_size());
    header[name] = {{"dtype", safetensors_dtype(t.scalar_type())},
                    {"shape", t.sizes().vec()},
                    {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // the data starts 8-byte aligned
  unsigned char length[8];
  uint64_t n = text.size();
  std::memcpy(length, &n, sizeof length);
  AtomicFile f(path);
  f.write(length, sizeof length);
  f.write(text.data(), text.size());
  for (const auto& t : data) f.write(t.data_ptr(), size_t(t.numel()) * t.element_size());
  return f.commit();
}

namespace {

using Entry = SafetensorsReader::Entry;

Entry parse_entry(const std::string& name, const nlohmann::json& j, uint64_t data_bytes,
                  const std::string& where) {
  if (!j.is_object()) throw Error(ds::str(where, ": entry \"", name, "\" is not an object"));
  Entry e{name, at::kFloat, {}, 0, 0};
  try {
    e.dtype = scalar_type_from_safetensors(j.at("dtype").get<std::string>());
    const auto& offsets = j.at("data_offsets");
    if (!offsets.is_array() || offsets.size() != 2) throw Error("data_offsets must be [begin, end]");
    e.begin = offsets[0].get<uint64_t>();
    e.end = offsets[1].get<uint64_t>();
    uint64_t numel = 1;
    for (const auto& d : j.at("shape")) {
      auto v = d.get<int64_t>();
      if (v < 0 || __builtin_mul_overflow(numel, uint64_t(v), &numel)) throw Error("bad shape");
      e.shape.push_back(v);
    }
    uint64_t bytes = 0;
    if (__builtin_mul_overflow(numel, uint64_t(c10::elementSize(e.dtype)), &bytes) || e.begin > e.end ||
        e.end > data_bytes || e.end - e.begin != bytes)
      throw Error(ds::str("data_offsets [", e.begin, ", ", e.end, "] do not hold ", numel, " elements of ",
                          j.at("dtype").get<std::string>(), " inside ", data_bytes, " data bytes"));
  } catch (const nlohmann::json::exception& ex) {
    throw Error(ds::str(where, ": tensor \"", name, "\": ", ex.what()));
  } catch (const Error& ex) {
    throw Error(ds::str(where, ": tensor \"", name, "\": ", ex.what()));
  }
  return e;
}

// Reads exactly `bytes` at `offset`; false at end of file.
bool pread_all(int fd, void* out, uint64_t bytes, uint64_t offset) {
  uint64_t done = 0;
  while (done < bytes) {
    const ssize_t r = ::pread(fd, static_cast<char*>(out) + done, bytes - done, off_t(offset + done));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) throw SystemError(ds::str("read failed: ", std::strerror(errno)));
    if (r == 0) return false;
    done += uint64_t(r);
  }
  return true;
}

}  // namespace

SafetensorsReader::SafetensorsReader(const std::string& path) : path_(path) {
  fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd_ < 0) throw SystemError(ds::str("cannot open ", path, ": ", std::strerror(errno)));
  try {
    struct stat st {};
    if (::fstat(fd_, &st) != 0) throw SystemError(ds::str("cannot stat ", path, ": ", std::strerror(errno)));
    if (!S_ISREG(st.st_mode)) throw Error(ds::str(path, ": not a regular file"));
    const auto size = uint64_t(st.st_size);
    uint64_t header_bytes = 0;
    if (size < 8 || !pread_all(fd_, &header_bytes, 8, 0))
      throw Error(ds::str(path, ": ", size, " bytes is too short for a safetensors file"));
    if (header_bytes > kMaxHeaderBytes || header_bytes > size - 8)
      throw Error(ds::str(path, ": header length ", header_bytes, " does not fit in a file of ", size, " bytes"));
    std::vector<char> text(header_bytes);
    if (!pread_all(fd_, text.data(), header_bytes, 8)) throw Error(ds::str(path, ": the file ends inside its header"));
    nlohmann::json header;
    try {
      header = detail::parse_bounded_json(text.begin(), text.end(), path);
    } catch (const nlohmann::json::exception& e) {
      throw Error(ds::str(path, ": the header is not valid JSON (", e.what(), ")"));
    }
    if (!header.is_object()) throw Error(ds::str(path, ": the header is not a JSON object"));
    data_start_ = 8 + header_bytes;
    const uint64_t data_bytes = size - data_start_;
    for (const auto& [name, value] : header.items()) {
      if (name == "__metadata__") {
        if (!value.is_object()) throw Error(ds::str(path, ": __metadata__ is not an object"));
        for (const auto& [k, v] : value.items()) {
          if (!v.is_string()) throw Error(ds::str(path, ": __metadata__.", k, " is not a string"));
          metadata_[k] = v.get<std::string>();
        }
        continue;
      }
      entries_.push_back(parse_entry(name, value, data_bytes, path));
    }
    std::sort(entries_.begin(), entries_.end(), [](const Entry& a, const Entry& b) {
      return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
    });
    uint64_t expected = 0;
    for (const auto& e : entries_) {
      if (e.begin != expected)
        throw Error(ds::str(path, ": tensor \"", e.name, "\" starts at byte ", e.begin, ", expected ", expected,
                            " (overlap or gap)"));
      expected = e.end;
    }
    if (expected != data_bytes)
      throw Error(ds::str(path, ": ", data_bytes - expected, " bytes after the last tensor are not described"));
  } catch (...) {
    ::close(fd_);
    throw;
  }
}

SafetensorsReader::~SafetensorsReader() {
  if (fd_ >= 0) ::close(fd_);
}

const SafetensorsReader::Entry* SafetensorsReader::find(const std::string& name) const {
  for (const auto& e : entries_)
    if (e.name == name) return &e;
  return nullptr;
}

at::Tensor SafetensorsReader::read(const std::string& name) const {
  const Entry* e = find(name);
  if (!e) throw Error(ds::str(path_, ": no tensor named \"", name, "\""));
  at::Tensor t = at::empty(e->shape, e->dtype);
  try {
    if (e->end > e->begin && !pread_all(fd_, t.data_ptr(), e->end - e->begin, data_start_ + e->begin))
      throw Error("the file is shorter than its header says (truncated since it was opened?)");
  } catch (const std::exception& ex) {
    throw Error(ds::str(path_, ": tensor \"", name, "\": ", ex.what()));
  }
  return t;
}

SafetensorsFile read_safetensors(const std::string& path) {
  SafetensorsReader reader(path);
  SafetensorsFile out;
  out.metadata = reader.metadata();
  for (const auto& e : reader.entries()) out.tensors.emplace_back(e.name, reader.read(e.name));
  return out;
}

}  // namespace ds::ckpt
