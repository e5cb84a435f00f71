// Consolidation: one fp32 state dict from a sharded checkpoint (DeepSpeed's zero_to_fp32),
// as a torch.save-compatible .pt and as .safetensors.
//
//   ds::ckpt::CheckpointReader ck("/ckpt");                  // the tag in /ckpt/latest
//   auto weights = ds::ckpt::consolidate_fp32(ck);           // {name: tensor}, model order
//   ds::ckpt::write_torch_state_dict("model.pt", weights);   // Python: torch.load("model.pt")
//   ds::ckpt::write_safetensors("model.safetensors", weights, {{"format", "pt"}});
#pragma once

#include <string>

#include "ds/ckpt/atomic_file.h"
#include "ds/ckpt/checkpoint.h"

namespace ds::ckpt {

// Every trainable parameter from the fp32 masters (exact, whatever the training precision),
// then the module entries that are not trainable parameters (buffers, frozen parameters) as
// the model-states file holds them.
NamedTensors consolidate_fp32(const CheckpointReader& ck);

// {name: tensor} as a plain dict that Python's torch.load (and torch::pickle_load) reads;
// written atomically, tensors in their own storage.
FileDigest write_torch_state_dict(const std::string& path, const NamedTensors& tensors);
// Reads such a file back (no checksum to check against: for tests and tools).
NamedTensors read_torch_state_dict(const std::string& path);

// The files `ds-ckpt to-fp32` writes: <out>.pt and <out>.safetensors.
struct ConsolidatedFiles {
  std::string pt_path, safetensors_path;
  FileDigest pt, safetensors;
  int64_t tensors = 0;
};
ConsolidatedFiles write_consolidated(const CheckpointReader& ck, const std::string& out_base);

}  // namespace ds::ckpt
