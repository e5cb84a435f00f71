// Turning a byte stream from a rank into whole lines, so that lines of different ranks never
// interleave mid-line and each line can carry its rank: "[rank1]: loss 2.31".
//
//   ds::launch::LineSplitter split;
//   for (auto& line : split.feed("par"))  ...;   // nothing yet
//   for (auto& line : split.feed("tial\nx")) ...;  // "partial"
//   if (auto rest = split.finish()) ...;            // "x" (a last line without '\n')
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace ds::launch {

class LineSplitter {
 public:
  // Lines longer than this are cut into pieces of this size (a rank printing without newlines
  // must not grow the launcher's memory without bound).
  static constexpr size_t kMaxLine = 64 * 1024;

  explicit LineSplitter(size_t max_line = kMaxLine) : max_line_(max_line > 0 ? max_line : 1) {}

  // The complete lines `data` finishes, without their '\n'.
  std::vector<std::string> feed(std::string_view data);
  // The unterminated rest at end of stream, if any.
  std::optional<std::string> finish();

 private:
  size_t max_line_;
  std::string pending_;
};

// prefix + line + '\n' for each line, concatenated (one write for a whole chunk).
std::string prefix_lines(std::string_view prefix, const std::vector<std::string>& lines);

// The prefix of a rank's lines: "[rank3]: ".
std::string rank_prefix(int rank);

}  // namespace ds::launch
