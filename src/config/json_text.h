// Internal: JSON text to a document, the way a ds_config.json is read.
//
// Comments (// and /* */) are accepted, as DeepSpeed accepts them. A key given twice in one
// object is an error naming its path: nlohmann::json would silently keep the last value.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

namespace ds::config_detail {

// Deeper nesting is refused before it is built (a ds_config.json is 3-4 levels deep; a document
// nested thousands deep would otherwise exhaust the stack of whatever walks it).
constexpr int kMaxJsonDepth = 64;

// Parses `text`; errors are one-line ds::ConfigError messages starting with "<source>: ".
nlohmann::json parse_json_text(std::string_view text, const std::string& source);

// The contents of the file at `path`; a missing or unreadable file is a ds::ConfigError naming it.
std::string read_text_file(const std::string& path);

}  // namespace ds::config_detail
