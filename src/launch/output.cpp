#include "ds/launch/output.h"

namespace ds::launch {

std::vector<std::string> LineSplitter::feed(std::string_view data) {
  // Invariant: pending_.size() <= max_line_.
  std::vector<std::string> lines;
  while (!data.empty()) {
    size_t nl = data.find('\n');
    size_t piece = nl == std::string_view::npos ? data.size() : nl;
    size_t room = max_line_ - pending_.size();
    if (piece > room) {  // too long: cut here and go on with the rest
      pending_.append(data.substr(0, room));
      data.remove_prefix(room);
      lines.push_back(std::move(pending_));
      pending_.clear();
      continue;
    }
    pending_.append(data.substr(0, piece));
    if (nl == std::string_view::npos) break;
    lines.push_back(std::move(pending_));
    pending_.clear();
    data.remove_prefix(nl + 1);
  }
  return lines;
}

std::optional<std::string> LineSplitter::finish() {
  if (pending_.empty()) return std::nullopt;
  std::string rest = std::move(pending_);
  pending_.clear();
  return rest;
}

std::string prefix_lines(std::string_view prefix, const std::vector<std::string>& lines) {
  std::string out;
  size_t total = 0;
  for (const auto& l : lines) total += prefix.size() + l.size() + 1;
  out.reserve(total);
  for (const auto& l : lines) {
    out.append(prefix);
    out.append(l);
    out.push_back('\n');
  }
  return out;
}

std::string rank_prefix(int rank) { return "[rank" + std::to_string(rank) + "]: "; }

}  // namespace ds::launch
