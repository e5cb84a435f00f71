#include "ds/common/plot.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <limits>
#include <sstream>

#include "ds/common/error.h"

namespace ds {

namespace {

struct Range {
  double lo = std::numeric_limits<double>::infinity(), hi = -std::numeric_limits<double>::infinity();
  void add(double v) {
    if (std::isfinite(v)) lo = std::min(lo, v), hi = std::max(hi, v);
  }
  void settle() {
    if (!(lo <= hi)) lo = 0, hi = 1;
    if (hi - lo < 1e-12) hi = lo + 1;
  }
};

std::string escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '<') out += "&lt;";
    else if (c == '>') out += "&gt;";
    else if (c == '&') out += "&amp;";
    else out += c;
  }
  return out;
}

std::string num(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.4g", v);
  return buf;
}

}  // namespace

std::string to_svg(const LineChart& c) {
  const double W = 800, H = 480, L = 70, R = 70, T = 40, B = 50, pw = W - L - R, ph = H - T - B;
  Range xr, yl, yr;
  for (const auto& s : c.series)
    for (size_t i = 0; i < s.x.size() && i < s.y.size(); ++i) xr.add(s.x[i]), (s.right_axis ? yr : yl).add(s.y[i]);
  xr.settle(), yl.settle(), yr.settle();
  std::ostringstream o;
  o << "<svg xmlns='http://www.w3.org/2000/svg' width='" << W << "' height='" << H << "' font-family='sans-serif' font-size='12'>\n"
    << "<rect width='100%' height='100%' fill='white'/>\n"
    << "<text x='" << W / 2 << "' y='22' text-anchor='middle' font-size='15'>" << escape(c.title) << "</text>\n"
    << "<rect x='" << L << "' y='" << T << "' width='" << pw << "' height='" << ph << "' fill='none' stroke='#444'/>\n";
  for (int i = 0; i <= 5; ++i) {  // grid and tick labels
    double fy = T + ph * i / 5.0, fx = L + pw * i / 5.0;
    o << "<line x1='" << L << "' y1='" << fy << "' x2='" << L + pw << "' y2='" << fy << "' stroke='#ddd'/>\n"
      << "<text x='" << L - 6 << "' y='" << fy + 4 << "' text-anchor='end'>" << num(yl.hi - (yl.hi - yl.lo) * i / 5.0) << "</text>\n"
      << "<text x='" << fx << "' y='" << T + ph + 18 << "' text-anchor='middle'>" << num(xr.lo + (xr.hi - xr.lo) * i / 5.0) << "</text>\n";
    if (!c.right_label.empty())
      o << "<text x='" << L + pw + 6 << "' y='" << fy + 4 << "'>" << num(yr.hi - (yr.hi - yr.lo) * i / 5.0) << "</text>\n";
  }
  o << "<text x='" << L + pw / 2 << "' y='" << H - 12 << "' text-anchor='middle'>" << escape(c.x_label) << "</text>\n"
    << "<text transform='translate(18," << T + ph / 2 << ") rotate(-90)' text-anchor='middle'>" << escape(c.y_label) << "</text>\n";
  if (!c.right_label.empty())
    o << "<text transform='translate(" << W - 14 << "," << T + ph / 2 << ") rotate(90)' text-anchor='middle'>" << escape(c.right_label) << "</text>\n";
  int legend = 0;
  for (const auto& s : c.series) {
    const Range& yrng = s.right_axis ? yr : yl;
    o << "<polyline fill='none' stroke='" << s.color << "' stroke-width='1.6' points='";
    for (size_t i = 0; i < s.x.size() && i < s.y.size(); ++i) {
      if (!std::isfinite(s.y[i])) continue;
      o << L + pw * (s.x[i] - xr.lo) / (xr.hi - xr.lo) << ',' << T + ph * (1 - (s.y[i] - yrng.lo) / (yrng.hi - yrng.lo)) << ' ';
    }
    o << "'/>\n<rect x='" << L + 10 << "' y='" << T + 10 + 18 * legend << "' width='14' height='4' fill='" << s.color << "'/>"
      << "<text x='" << L + 30 << "' y='" << T + 16 + 18 * legend << "'>" << escape(s.label) << "</text>\n";
    ++legend;
  }
  o << "</svg>\n";
  return o.str();
}

void write_svg(const LineChart& chart, const std::string& path) {
  std::ofstream f(path);
  if (!f) throw Error(str("cannot write the plot to '", path, "'"));
  f << to_svg(chart);
  if (!f) throw Error(str("error writing the plot to '", path, "'"));
}

}  // namespace ds
