// safetensors files (Hugging Face's format), written and read without any library:
//
//   8 bytes        N, little-endian u64: the header's length
//   N bytes        JSON {"__metadata__": {str: str}, name: {"dtype": "F32", "shape": [..],
//                  "data_offsets": [begin, end]}, ...}, padded with spaces to a multiple of 8
//   the rest       the tensors' bytes, little-endian, C order; offsets relative to here,
//                  contiguous from 0 with no gaps
//
//   ds::ckpt::write_safetensors("model.safetensors", {{"w", w}, {"b", b}}, {{"format", "pt"}});
//   ds::ckpt::SafetensorsFile f = ds::ckpt::read_safetensors("model.safetensors");  // validated
//   ds::ckpt::SafetensorsReader r("model.safetensors");   // the header only; tensors on demand
//   at::Tensor w = r.read("wte.weight");                   // one pread
#pragma once

#include <ATen/core/Tensor.h>

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "ds/ckpt/atomic_file.h"

namespace ds::ckpt {

// "F32", "BF16", "F16", "F64", "I64", "I32", "I16", "I8", "U8", "BOOL"; throws for others.
std::string safetensors_dtype(at::ScalarType t);
at::ScalarType scalar_type_from_safetensors(const std::string& dtype);

// Writes the tensors (dense CPU; made contiguous) in the given order, atomically.
FileDigest write_safetensors(const std::string& path,
                             const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                             const std::map<std::string, std::string>& metadata = {});

// A file's header, checked as read_safetensors checks it, and its tensors read one at a time
// (pread): a multi-GB file is never in memory whole. Throws ds::Error naming the file.
class SafetensorsReader {
 public:
  struct Entry {
    std::string name;
    at::ScalarType dtype = at::kFloat;
    std::vector<int64_t> shape;
    uint64_t begin = 0, end = 0;  // byte offsets in the data section
  };
  explicit SafetensorsReader(const std::string& path);
  ~SafetensorsReader();
  SafetensorsReader(const SafetensorsReader&) = delete;
  SafetensorsReader& operator=(const SafetensorsReader&) = delete;

  const std::string& path() const { return path_; }
  const std::vector<Entry>& entries() const { return entries_; }  // in data-offset order
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const Entry* find(const std::string& name) const;  // null if absent
  // The tensor's bytes in a new tensor of its dtype and shape; throws for an unknown name.
  at::Tensor read(const std::string& name) const;

 private:
  std::string path_;
  int fd_ = -1;
  uint64_t data_start_ = 0;
  std::vector<Entry> entries_;
  std::map<std::string, std::string> metadata_;
};

struct SafetensorsFile {
  std::vector<std::pair<std::string, at::Tensor>> tensors;  // in data-offset order
  std::map<std::string, std::string> metadata;
};
// Reads and checks everything the format promises (header bounds, dtypes, shapes against
// byte ranges, no overlaps or gaps); throws ds::Error naming the file and the problem.
SafetensorsFile read_safetensors(const std::string& path);

}  // namespace ds::ckpt
