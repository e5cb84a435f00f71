// ds_config.json text -> ds::Config, resolved for 1-8 ranks, written back and parsed again.
#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

#include "ds/config/config.h"
#include "fuzz_common.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const int world = 1 + data[0] % 8;
  const std::string text(reinterpret_cast<const char*>(data + 1), size - 1);
  ds::fuzz::expect_only_ds_errors([&] {
    ds::Config c = ds::Config::parse(text, "fuzz.json");
    c.resolve(world);
    const std::string again = c.to_json().dump();
    ds::Config back = ds::Config::parse(again, "round trip");
    back.resolve(world);
    if (back.to_json() != c.to_json()) {
      std::fprintf(stderr, "fuzz: the resolved config does not round-trip:\n%s\n", again.c_str());
      std::abort();
    }
    (void)c.fingerprint();
  });
  return 0;
}
