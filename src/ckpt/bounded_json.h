// Internal: JSON from a checkpoint file, refused before it is built when nested deeper than
// any file we write (a manifest is 4 levels deep, a safetensors header 3): a corrupt or hostile
// file cannot exhaust the stack of the code that walks it.
#pragma once

#include <nlohmann/json.hpp>

#include "ds/common/error.h"

namespace ds::ckpt::detail {

constexpr int kMaxJsonDepth = 32;

template <typename It>
nlohmann::json parse_bounded_json(It begin, It end, const std::string& what) {
  nlohmann::json::parser_callback_t limit = [&what](int depth, nlohmann::json::parse_event_t event, nlohmann::json&) {
    using Event = nlohmann::json::parse_event_t;
    if ((event == Event::object_start || event == Event::array_start) && depth >= kMaxJsonDepth)
      throw Error(ds::str(what, ": JSON nested deeper than ", kMaxJsonDepth, " levels; not a file deepspeed.cpp wrote"));
    return true;
  };
  return nlohmann::json::parse(begin, end, limit);
}

}  // namespace ds::ckpt::detail
