// A .safetensors file -> ds::ckpt::SafetensorsFile (header, offsets, dtypes, shapes).
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <string>

#include "ds/ckpt/safetensors.h"
#include "fuzz_common.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string path = "/dev/shm/ds_fuzz_safetensors." + std::to_string(::getpid());
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) return 0;
  std::fwrite(data, 1, size, f);
  std::fclose(f);
  ds::fuzz::expect_only_ds_errors([&] { ds::ckpt::read_safetensors(path); });
  std::remove(path.c_str());
  return 0;
}
