// Command-line conventions shared by the tools (header-only; the tools link CLI11):
// every flag is range-checked with a human message, and every usage error is one line
//   ds-train: error: --steps: expected an integer from 1 to 1000000000, got "0" (see ds-train --help)
// with exit code 2 (a bad run — config, data, a failing rank — exits 1).
#pragma once

#include <CLI/CLI.hpp>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

namespace ds::cli {

constexpr int kExitUsage = 2;

// An integer in [lo, hi].
inline CLI::Validator int_range(int64_t lo, int64_t hi) {
  return CLI::Validator(
      [lo, hi](std::string& text) {
        try {
          size_t used = 0;
          long long v = std::stoll(text, &used);
          if (used == text.size() && v >= lo && v <= hi) return std::string();
        } catch (const std::exception&) {
        }
        return "expected an integer from " + std::to_string(lo) + " to " + std::to_string(hi) + ", got \"" + text +
               "\"";
      },
      "INT in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
}

// Parses argv; --help prints and exits 0, a usage error prints one line and exits 2.
inline void parse_or_exit(CLI::App& app, int argc, char** argv, const char* tool) {
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) std::exit(app.exit(e));
    std::string what = e.what();
    std::fprintf(stderr, "%s: error: %s (see %s --help)\n", tool, what.substr(0, what.find('\n')).c_str(), tool);
    std::exit(kExitUsage);
  }
}

}  // namespace ds::cli
