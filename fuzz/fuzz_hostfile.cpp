// Hostfile text, then --include / --exclude filters over the hosts it names.
#include <cstdint>
#include <string>

#include "ds/launch/hostfile.h"
#include "fuzz_common.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string all(reinterpret_cast<const char*>(data), size);
  // Three parts split at the first two NUL bytes: hostfile, include, exclude.
  const size_t a = all.find('\0'), b = a == std::string::npos ? a : all.find('\0', a + 1);
  const std::string text = all.substr(0, a);
  const std::string include = a == std::string::npos ? "" : all.substr(a + 1, b == std::string::npos ? b : b - a - 1);
  const std::string exclude = b == std::string::npos ? "" : all.substr(b + 1);
  ds::fuzz::expect_only_ds_errors([&] {
    auto pool = ds::launch::parse_hostfile(text, "fuzz");
    ds::launch::World world = ds::launch::world_from_pool(pool);
    ds::launch::filter_world(world, include, exclude);
  });
  return 0;
}
