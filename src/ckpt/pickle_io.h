// Internal: torch.save-compatible files without an in-memory copy, and typed reads of what
// torch::jit::pickle_load returns. Only checkpoint code includes this (it pulls in the JIT
// pickler headers).
#pragma once

#include <ATen/core/ivalue.h>

#include <string>
#include <utility>
#include <vector>

#include "ds/ckpt/atomic_file.h"
#include "ds/ckpt/manifest.h"

namespace ds::ckpt::detail {

using NamedTensors = std::vector<std::pair<std::string, at::Tensor>>;

// The "format" entries of our .pt files (Python readers can tell them apart).
constexpr const char* kShardFormat = "deepspeed.cpp zero shard";
constexpr const char* kModelFormat = "deepspeed.cpp model states";
constexpr const char* kRankStatesFormat = "deepspeed.cpp optimizer rank states";
constexpr const char* kProducerVersion = "deepspeed.cpp 0.1.0";

// Writes `value` atomically as the zip archive torch::pickle_save makes (data.pkl + one record
// per storage), streaming each storage straight to the file. Dicts are plain (no TorchScript
// type tags), so Python's torch.load, also with weights_only=True, reads them.
FileDigest save_pickle(const std::string& path, const c10::IValue& value);

// Reads `path`, checks its size and xxh64 against `expected`, and only then unpickles it.
// Throws ds::Error naming the file (truncated, corrupt, unparsable).
c10::IValue load_pickle(const std::string& path, const FileInfo& expected);
// Unpickles bytes already read (and checked) from `path`.
c10::IValue unpickle(const std::vector<char>& bytes, const std::string& path);

// Tensors sharing one storage are kept as views when they use most of it (a FlatUnit's
// parameters); otherwise -- a shard sliced out of a big buffer, a non-contiguous tensor --
// they are copied, so that a file never carries bytes no tensor refers to.
NamedTensors compact_for_save(const NamedTensors& tensors);

c10::impl::GenericDict new_dict();
c10::impl::GenericDict tensor_dict(const NamedTensors& tensors);

// Typed access to an unpickled dict; errors name the file and the key.
class DictReader {
 public:
  DictReader(const c10::IValue& value, std::string where);
  bool has(const std::string& key) const;
  const c10::IValue& get(const std::string& key) const;
  int64_t integer(const std::string& key) const;
  std::string string(const std::string& key) const;
  DictReader dict(const std::string& key) const;
  at::Tensor tensor(const std::string& key) const;
  // Every entry, which must all be tensors with string keys, in file order.
  NamedTensors tensors() const;
  const std::string& where() const { return where_; }

 private:
  c10::impl::GenericDict dict_;
  std::string where_;
};

}  // namespace ds::ckpt::detail
