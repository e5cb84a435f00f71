// A checkpoint's manifest.json text -> ds::ckpt::Manifest, written back and parsed again.
#include <cstdint>
#include <string>

#include "ds/ckpt/manifest.h"
#include "fuzz_common.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  ds::fuzz::expect_only_ds_errors([&] {
    ds::ckpt::Manifest m = ds::ckpt::parse_manifest(text, "fuzz/manifest.json");
    ds::ckpt::Manifest back = ds::ckpt::parse_manifest(ds::ckpt::manifest_text(m), "round trip");
    if (ds::ckpt::manifest_to_json(back) != ds::ckpt::manifest_to_json(m)) {
      std::fprintf(stderr, "fuzz: a manifest does not round-trip\n");
      std::abort();
    }
  });
  return 0;
}
