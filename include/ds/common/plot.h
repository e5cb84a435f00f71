// A line chart written as a standalone SVG file (opens in any browser), for loss curves.
//
//   ds::LineChart c{"ds-train: reverse", "step", "loss"};
//   c.series.push_back({"train loss", "#1f77b4", steps, losses, false});
//   c.series.push_back({"held-out accuracy", "#d62728", eval_steps, accs, true});  // right axis
//   ds::write_svg(c, "loss.svg");
#pragma once

#include <string>
#include <vector>

namespace ds {

struct Series {
  std::string label;
  std::string color;
  std::vector<double> x, y;
  bool right_axis = false;  // plotted against the right-hand axis (e.g. accuracy in [0, 1])
};

struct LineChart {
  std::string title, x_label, y_label, right_label;
  std::vector<Series> series;
  bool log_y = false;  // the left axis in log scale (losses); needs positive values
};

std::string to_svg(const LineChart& chart);

// Round tick values covering [lo, hi]: steps of 1, 2 or 5 x 10^k, about `target` of them
// (linear), or 1, 2, 5 x 10^k inside the range (log; every decade when it spans several).
std::vector<double> nice_ticks(double lo, double hi, int target = 6);
std::vector<double> log_ticks(double lo, double hi);
// Throws ds::Error when the file cannot be written.
void write_svg(const LineChart& chart, const std::string& path);

}  // namespace ds
