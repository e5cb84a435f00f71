// Bounds of a .pt file, checked before LibTorch's reader sees it.
//
// torch.save writes a zip archive (stored entries, zip64 end records) holding a pickle program
// (data.pkl) and one record per tensor storage. LibTorch 1.13's reader trusts the file: for some
// damaged archives it reads past the end of the buffer, and for a damaged length in the pickle
// program it allocates and zero-fills that length (up to 4 GiB) before finding the bytes are not
// there, and it sizes its memo table by the largest index the program names (all found by
// fuzzing). check_pt_bounds walks the end records, the central directory, every local header
// and the pickle program's length-prefixed arguments and memo indices and refuses, as a
// ds::Error naming the file and the record, anything that points outside its bounds.
#pragma once

#include <cstddef>
#include <string>

namespace ds::ckpt::detail {

void check_pt_bounds(const char* data, size_t size, const std::string& path);

}  // namespace ds::ckpt::detail
