// Command-line options of the benchmarks: "--name value" pairs, anywhere on the line.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <cstring>

namespace ds::bench {

inline int64_t arg(int argc, char** argv, const char* name, int64_t fallback) {
  for (int i = 1; i + 1 < argc; ++i)
    if (!std::strcmp(argv[i], name)) return std::atoll(argv[i + 1]);
  return fallback;
}

}  // namespace ds::bench
