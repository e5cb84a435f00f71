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

struct SafetensorsFile {
  std::vector<std::pair<std::string, at::Tensor>> tensors;  // in data-offset order
  std::map<std::string, std::string> metadata;
};
// Reads and checks everything the format promises (header bounds, dtypes, shapes against
// byte ranges, no overlaps or gaps); throws ds::Error naming the file and the problem.
SafetensorsFile read_safetensors(const std::string& path);

}  // namespace ds::ckpt
