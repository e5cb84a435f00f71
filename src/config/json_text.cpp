#include "json_text.h"

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <vector>

#include "ds/common/error.h"
#include "ds/common/strings.h"
#include "schema.h"

namespace ds::config_detail {

namespace {

// Follows the parser's events to know where it is, so a repeated key can be reported with its path.
class DuplicateKeyDetector {
 public:
  explicit DuplicateKeyDetector(const std::string& source) : source_(source) {}

  bool on_event(nlohmann::json::parse_event_t event, const nlohmann::json& parsed) {
    using Event = nlohmann::json::parse_event_t;
    switch (event) {
      case Event::object_start:
        frames_.push_back(Frame{false, {}, "", 0});
        break;
      case Event::array_start:
        frames_.push_back(Frame{true, {}, "", 0});
        break;
      case Event::key:
        on_key(parsed.get<std::string>());
        break;
      case Event::object_end:
      case Event::array_end:
        frames_.pop_back();
        element_done();
        break;
      case Event::value:
        element_done();
        break;
    }
    return true;  // keep everything
  }

 private:
  struct Frame {
    bool is_array;
    std::set<std::string> keys;
    std::string key;  // current key (objects)
    size_t index;     // current element (arrays)
  };

  void element_done() {
    if (!frames_.empty() && frames_.back().is_array) ++frames_.back().index;
  }

  void on_key(const std::string& key) {
    Frame& top = frames_.back();
    if (!top.keys.insert(key).second) {
      throw ConfigError(
          format_message(source_, join_path(path_to_top(), key),
                         "duplicate key (JSON parsers silently keep only the last value; remove one)"));
    }
    top.key = key;
  }

  // The path of the innermost open container.
  std::string path_to_top() const {
    std::string path;
    for (size_t i = 0; i + 1 < frames_.size(); ++i) {
      const Frame& f = frames_[i];
      path = f.is_array ? str(path, "[", f.index, "]") : join_path(path, f.key);
    }
    return path;
  }

  const std::string& source_;
  std::vector<Frame> frames_;
};

// nlohmann's message without its "[json.exception.parse_error.101] " prefix.
std::string strip_exception_id(const std::string& what) {
  size_t close = what.find("] ");
  return what.rfind("[json.exception.", 0) == 0 && close != std::string::npos ? what.substr(close + 2) : what;
}

}  // namespace

nlohmann::json parse_json_text(std::string_view text, const std::string& source) {
  DuplicateKeyDetector detector(source);
  nlohmann::json::parser_callback_t callback = [&detector, &source](int depth, nlohmann::json::parse_event_t event,
                                                                    nlohmann::json& parsed) {
    using Event = nlohmann::json::parse_event_t;
    if ((event == Event::object_start || event == Event::array_start) && depth >= kMaxJsonDepth)
      throw ConfigError(format_message(source, "", str("nested deeper than ", kMaxJsonDepth,
                                                       " levels; a ds_config.json needs fewer than 10")));
    return detector.on_event(event, parsed);
  };
  try {
    return nlohmann::json::parse(text.begin(), text.end(), callback, /*allow_exceptions=*/true,
                                 /*ignore_comments=*/true);
  } catch (const nlohmann::json::exception& e) {
    throw ConfigError(format_message(source, "", "invalid JSON: " + strip_exception_id(e.what())));
  }
}

std::string read_text_file(const std::string& path) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) throw ConfigError(str(path, ": cannot read: is a directory"));
  std::ifstream in(path, std::ios::binary);
  if (!in) throw ConfigError(str(path, ": cannot open: ", std::strerror(errno)));
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) throw ConfigError(str(path, ": cannot read: ", std::strerror(errno)));
  return text.str();
}

}  // namespace ds::config_detail
