// Helpers shared by the ds::Config tests.
#pragma once

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <string>

#include "ds/common/error.h"
#include "ds/config/config.h"

namespace ds::config_test {

// The ds::ConfigError message for `json` (resolved with `world_size` when > 0); fails the test
// when nothing is thrown, or when the message is not a single "ds_config.json: ..." line.
inline std::string error_of(const std::string& json, int64_t world_size = 0) {
  try {
    Config c = Config::parse(json);
    if (world_size > 0) c.resolve(world_size);
  } catch (const ConfigError& e) {
    std::string msg = e.what();
    EXPECT_EQ(msg.find('\n'), std::string::npos) << "message spans lines: " << msg;
    EXPECT_EQ(msg.rfind("ds_config.json: ", 0), 0u) << "message does not start with the source: " << msg;
    return msg;
  }
  ADD_FAILURE() << "no ConfigError for: " << json;
  return "";
}

// The one warning containing `needle` ("" when none does).
inline std::string warning_with(const Config& c, const std::string& needle) {
  for (const auto& w : c.warnings())
    if (w.find(needle) != std::string::npos) return w;
  return "";
}

// Directory of the test configs (tests/config/data).
inline std::string data_dir() {
  const char* src = std::getenv("DS_SOURCE_DIR");
  return src ? std::string(src) + "/tests/config/data" : std::string(DS_CONFIG_TEST_DATA_DIR);
}

inline std::string data_file(const std::string& name) { return data_dir() + "/" + name; }

}  // namespace ds::config_test
