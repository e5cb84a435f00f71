// Several runs' curves in one SVG chart (ds::LineChart): each input is a CSV file with a header
// line, and a series plots two of its columns by name. Used by bench/convergence.sh to put the
// fp32 and bf16-compute loss curves of ds-train in one picture.
//
//   build/bench/plot_runs --out loss.svg --title "GPT 6 x 384" --y loss
//       "fp32 train=fp32.csv:step:loss" "bf16 train=bf16.csv:step:loss" ...
//   (LABEL=FILE:XCOLUMN:YCOLUMN; colours from a fixed palette in the order given)
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "ds/common/error.h"
#include "ds/common/plot.h"

namespace {

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::stringstream in(s);
  for (std::string part; std::getline(in, part, sep);) out.push_back(part);
  if (!s.empty() && s.back() == sep) out.emplace_back();
  return out;
}

// label=FILE:X:Y -> a series of the named columns; rows with a non-number in them are skipped.
ds::Series read_series(const std::string& spec, const std::string& color) {
  const size_t eq = spec.find('=');
  const std::vector<std::string> f = split(eq == std::string::npos ? "" : spec.substr(eq + 1), ':');
  if (eq == std::string::npos || f.size() != 3)
    throw ds::Error(ds::str("'", spec, "': expected LABEL=FILE:XCOLUMN:YCOLUMN"));
  std::ifstream in(f[0]);
  std::string line;
  if (!in || !std::getline(in, line)) throw ds::Error(ds::str("cannot read ", f[0]));
  const std::vector<std::string> header = split(line, ',');
  auto column = [&](const std::string& name) {
    for (size_t i = 0; i < header.size(); ++i)
      if (header[i] == name) return i;
    throw ds::Error(ds::str(f[0], " has no column '", name, "' (header: ", line, ")"));
  };
  const size_t xc = column(f[1]), yc = column(f[2]);
  ds::Series s{spec.substr(0, eq), color, {}, {}, false};
  while (std::getline(in, line)) {
    const std::vector<std::string> cells = split(line, ',');
    if (cells.size() <= std::max(xc, yc)) continue;
    char *xe = nullptr, *ye = nullptr;
    const double x = std::strtod(cells[xc].c_str(), &xe), y = std::strtod(cells[yc].c_str(), &ye);
    if (xe == cells[xc].c_str() || ye == cells[yc].c_str()) continue;
    s.x.push_back(x);
    s.y.push_back(y);
  }
  if (s.x.empty()) throw ds::Error(ds::str(f[0], ": no numeric rows in columns ", f[1], " and ", f[2]));
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  const char* palette[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"};
  ds::LineChart chart;
  chart.x_label = "step";
  std::string out;
  std::vector<std::string> specs;
  for (int i = 1; i < argc; ++i) {
    const bool has_value = i + 1 < argc;
    if (!std::strcmp(argv[i], "--out") && has_value) out = argv[++i];
    else if (!std::strcmp(argv[i], "--title") && has_value) chart.title = argv[++i];
    else if (!std::strcmp(argv[i], "--x") && has_value) chart.x_label = argv[++i];
    else if (!std::strcmp(argv[i], "--y") && has_value) chart.y_label = argv[++i];
    else specs.emplace_back(argv[i]);
  }
  try {
    if (out.empty() || specs.empty()) throw ds::Error("usage: plot_runs --out F.svg [--title T] [--x X] [--y Y] LABEL=FILE:XCOL:YCOL...");
    for (size_t i = 0; i < specs.size(); ++i) chart.series.push_back(read_series(specs[i], palette[i % 6]));
    ds::write_svg(chart, out);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "plot_runs: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
