// Small string helpers shared by the config parser, the launcher and the tools.
//
//   ds::nearest("stgae", {"stage", "offload_param"})  -> "stage"
//   ds::split("a,b,,c", ',')                           -> {"a", "b", "", "c"}
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace ds {

// Levenshtein distance between a and b.
size_t edit_distance(std::string_view a, std::string_view b);

// The candidate closest to `word` (edit distance, case-insensitive), or "" when none is
// close enough to be a plausible typo (distance > max(2, len/3)).
std::string nearest(std::string_view word, const std::vector<std::string>& candidates);

std::vector<std::string> split(std::string_view s, char sep);
std::string trim(std::string_view s);
bool starts_with(std::string_view s, std::string_view prefix);
// Equal ignoring ASCII case: iequals("AdamW", "adamw") -> true.
bool iequals(std::string_view a, std::string_view b);

// Human-readable byte count: 1536 -> "1.50 KiB".
std::string format_bytes(double bytes);

}  // namespace ds
