#include "pickle_io.h"

#include <ATen/ATen.h>
#include <caffe2/serialize/inline_container.h>
#include <torch/csrc/jit/serialization/pickle.h>
#include <torch/csrc/jit/serialization/pickler.h>

#include <unordered_map>

#include "ds/common/error.h"
#include "pt_check.h"

namespace ds::ckpt::detail {

FileDigest save_pickle(const std::string& path, const c10::IValue& value) {
  std::vector<char> program;  // the pickle opcodes: small, tensors are records of their own
  torch::jit::Pickler pickler([&](const char* p, size_t n) { program.insert(program.end(), p, p + n); },
                              /*tensor_table=*/nullptr, /*type_renamer=*/nullptr,
                              /*memoized_class_types=*/nullptr,
                              /*get_tensor_id=*/nullptr, /*tag_aggregates=*/false);
  pickler.protocol();
  pickler.pushIValue(value);
  pickler.stop();

  AtomicFile file(path);
  caffe2::serialize::PyTorchStreamWriter zip([&](const void* p, size_t n) {
    file.write(p, n);
    return n;
  });
  const auto& storages = pickler.tensorData();  // record "data/<i>" holds the storage with key i
  for (size_t i = 0; i < storages.size(); ++i) {
    auto data = torch::jit::getWriteableTensorData(storages[i]);
    zip.writeRecord("data/" + std::to_string(i), data.data(), data.sizeInBytes());
  }
  zip.writeRecord("data.pkl", program.data(), program.size());
  zip.writeEndOfFile();
  return file.commit();
}

namespace {

std::string first_line(const char* what) {
  std::string s(what);
  auto nl = s.find('\n');
  return nl == std::string::npos ? s : s.substr(0, nl);
}

}  // namespace

c10::IValue load_pickle(const std::string& path, const FileInfo& expected) {
  FileContents file = read_file(path);
  if (file.digest.bytes != expected.bytes)
    throw Error(ds::str("checkpoint file ", path, " has ", file.digest.bytes,
                        " bytes but the manifest records ", expected.bytes, " (truncated or overwritten)"));
  if (file.digest.xxh64 != expected.xxh64)
    throw Error(ds::str("checkpoint file ", path, " is corrupt: its xxh64 is ", to_hex(file.digest.xxh64),
                        " but the manifest records ", to_hex(expected.xxh64)));
  return unpickle(file.data, path);
}

c10::IValue unpickle(const std::vector<char>& bytes, const std::string& path) {
  check_pt_bounds(bytes.data(), bytes.size(), path);
  try {
    return torch::jit::pickle_load(bytes);
  } catch (const c10::Error& e) {
    throw Error(ds::str("cannot parse checkpoint file ", path, ": ", first_line(e.what_without_backtrace())));
  } catch (const std::exception& e) {
    throw Error(ds::str("cannot parse checkpoint file ", path, ": ", first_line(e.what())));
  }
}

NamedTensors compact_for_save(const NamedTensors& tensors) {
  std::unordered_map<const void*, size_t> used;  // storage -> bytes its tensors refer to
  for (const auto& [name, t] : tensors) {
    DS_CHECK(t.defined(), "tensor ", name, " is undefined");
    if (!t.device().is_cpu() || t.is_sparse())
      throw Error(ds::str("tensor ", name, " must be a dense CPU tensor to be saved, got ", t.device()));
    if (t.is_contiguous()) used[t.storage().unsafeGetStorageImpl()] += t.numel() * t.element_size();
  }
  NamedTensors out;
  out.reserve(tensors.size());
  for (const auto& [name, t] : tensors) {
    bool keep = t.is_contiguous() && used[t.storage().unsafeGetStorageImpl()] * 2 >= t.storage().nbytes();
    out.emplace_back(name, keep ? t : t.clone(at::MemoryFormat::Contiguous));
  }
  return out;
}

c10::impl::GenericDict new_dict() {
  return c10::impl::GenericDict(c10::StringType::get(), c10::AnyType::get());
}

c10::impl::GenericDict tensor_dict(const NamedTensors& tensors) {
  c10::impl::GenericDict d = new_dict();
  for (const auto& [name, t] : compact_for_save(tensors)) {
    if (!d.insert(name, t).second) throw Error(ds::str("tensor name ", name, " appears twice"));
  }
  return d;
}

DictReader::DictReader(const c10::IValue& value, std::string where)
    : dict_(new_dict()), where_(std::move(where)) {
  if (!value.isGenericDict()) throw Error(ds::str(where_, ": expected a dict, got ", value.tagKind()));
  dict_ = value.toGenericDict();
}

bool DictReader::has(const std::string& key) const { return dict_.contains(key); }

const c10::IValue& DictReader::get(const std::string& key) const {
  auto it = dict_.find(key);
  if (it == dict_.end()) throw Error(ds::str(where_, ": no entry \"", key, "\""));
  return it->value();
}

int64_t DictReader::integer(const std::string& key) const {
  const c10::IValue& v = get(key);
  if (!v.isInt()) throw Error(ds::str(where_, "[\"", key, "\"]: expected an integer, got ", v.tagKind()));
  return v.toInt();
}

std::string DictReader::string(const std::string& key) const {
  const c10::IValue& v = get(key);
  if (!v.isString()) throw Error(ds::str(where_, "[\"", key, "\"]: expected a string, got ", v.tagKind()));
  return v.toStringRef();
}

DictReader DictReader::dict(const std::string& key) const {
  return DictReader(get(key), ds::str(where_, "[\"", key, "\"]"));
}

at::Tensor DictReader::tensor(const std::string& key) const {
  const c10::IValue& v = get(key);
  if (!v.isTensor()) throw Error(ds::str(where_, "[\"", key, "\"]: expected a tensor, got ", v.tagKind()));
  return v.toTensor();
}

NamedTensors DictReader::tensors() const {
  NamedTensors out;
  for (const auto& entry : dict_) {
    if (!entry.key().isString()) throw Error(ds::str(where_, ": a key is not a string"));
    const std::string& name = entry.key().toStringRef();
    if (!entry.value().isTensor())
      throw Error(ds::str(where_, "[\"", name, "\"]: expected a tensor, got ", entry.value().tagKind()));
    out.emplace_back(name, entry.value().toTensor());
  }
  return out;
}

}  // namespace ds::ckpt::detail
