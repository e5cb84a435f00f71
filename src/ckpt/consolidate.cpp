#include "ds/ckpt/consolidate.h"

#include <ATen/ATen.h>

#include <unordered_set>

#include "ds/ckpt/safetensors.h"
#include "ds/common/error.h"
#include "pickle_io.h"

namespace ds::ckpt {

NamedTensors consolidate_fp32(const CheckpointReader& ck) {
  NamedTensors out = ck.load_fp32_weights();
  std::unordered_set<std::string> names;
  for (const auto& [name, t] : out) names.insert(name);
  for (const auto& [name, t] : ck.load_model_states().module)
    if (names.insert(name).second) out.emplace_back(name, t);
  return out;
}

FileDigest write_torch_state_dict(const std::string& path, const NamedTensors& tensors) {
  return detail::save_pickle(path, detail::tensor_dict(tensors));  // copies only what would bloat the file
}

NamedTensors read_torch_state_dict(const std::string& path) {
  return detail::DictReader(detail::unpickle(read_file(path).data, path), path).tensors();
}

ConsolidatedFiles write_consolidated(const CheckpointReader& ck, const std::string& out_base) {
  if (out_base.empty()) throw Error("empty output path");
  NamedTensors weights = consolidate_fp32(ck);
  ConsolidatedFiles out;
  out.pt_path = out_base + ".pt";
  out.safetensors_path = out_base + ".safetensors";
  out.tensors = int64_t(weights.size());
  out.pt = write_torch_state_dict(out.pt_path, weights);
  const Manifest& m = ck.manifest();
  out.safetensors = write_safetensors(out.safetensors_path, weights,
                                      {{"format", "pt"},
                                       {"producer", m.producer},
                                       {"tag", ck.tag()},
                                       {"global_steps", std::to_string(m.engine.global_steps)}});
  return out;
}

}  // namespace ds::ckpt
