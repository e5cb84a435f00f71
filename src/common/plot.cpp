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
  std::snprintf(buf, sizeof buf, "%.4g", std::fabs(v) < 1e-12 ? 0.0 : v);
  return buf;
}

double nice_step(double span, int target) {
  const double raw = span / std::max(1, target - 1);
  const double p = std::pow(10.0, std::floor(std::log10(raw)));
  for (double m : {1.0, 2.0, 5.0, 10.0})
    if (m * p >= raw) return m * p;
  return 10 * p;
}

// An axis: its range widened to whole ticks (linear) and the map of a value to [0, 1].
struct Axis {
  bool log = false;
  double lo = 0, hi = 1;
  std::vector<double> ticks;
  Axis(Range r, bool log_scale) : log(log_scale && r.lo > 0) {
    if (log) {
      ticks = log_ticks(r.lo, r.hi);
      lo = std::log10(std::min(r.lo, ticks.front())), hi = std::log10(std::max(r.hi, ticks.back()));
      if (hi - lo < 1e-12) hi = lo + 1;
    } else {
      ticks = nice_ticks(r.lo, r.hi);
      lo = ticks.front(), hi = ticks.back();
    }
  }
  double at(double v) const { return ((log ? std::log10(v) : v) - lo) / (hi - lo); }
};

}  // namespace

std::vector<double> nice_ticks(double lo, double hi, int target) {
  if (!(hi > lo)) hi = lo + 1;
  const double step = nice_step(hi - lo, target);
  std::vector<double> t;
  for (double v = std::floor(lo / step) * step; v < hi + step * 0.5; v += step) t.push_back(v);
  if (t.size() < 2) t.push_back(t.back() + step);
  return t;
}

std::vector<double> log_ticks(double lo, double hi) {
  std::vector<double> t;
  const int first = int(std::floor(std::log10(lo))), last = int(std::ceil(std::log10(hi)));
  const bool decades = last - first > 2;  // several decades: 10^k only
  for (int k = first; k <= last; ++k)
    for (double m : decades ? std::vector<double>{1} : std::vector<double>{1, 2, 5}) {
      const double v = m * std::pow(10.0, k);
      if (v >= lo / 1.0001 && v <= hi * 1.0001) t.push_back(v);
    }
  // The range's own ends, rounded down and up to a 1-2-5 value, keep the data inside.
  auto below = [decades](double v) {
    const double p = std::pow(10.0, std::floor(std::log10(v)));
    if (decades) return p;
    for (double m : {5.0, 2.0, 1.0})
      if (m * p <= v * 1.0001) return m * p;
    return p;
  };
  auto above = [decades](double v) {
    const double p = std::pow(10.0, std::floor(std::log10(v)));
    if (decades) return v <= p * 1.0001 ? p : 10 * p;
    for (double m : {1.0, 2.0, 5.0, 10.0})
      if (m * p >= v / 1.0001) return m * p;
    return 10 * p;
  };
  if (t.empty() || t.front() > lo * 1.0001) t.insert(t.begin(), below(lo));
  if (t.back() < hi / 1.0001) t.push_back(above(hi));
  return t;
}

std::string to_svg(const LineChart& c) {
  const double W = 800, H = 480, L = 70, R = 70, T = 40, B = 50, pw = W - L - R, ph = H - T - B;
  Range xr, yl, yr;
  for (const auto& s : c.series)
    for (size_t i = 0; i < s.x.size() && i < s.y.size(); ++i) {
      if (c.log_y && !s.right_axis && !(s.y[i] > 0)) continue;  // nothing to draw at or below 0 on a log axis
      xr.add(s.x[i]), (s.right_axis ? yr : yl).add(s.y[i]);
    }
  xr.settle(), yl.settle(), yr.settle();
  const Axis x(xr, false), left(yl, c.log_y), right(yr, false);
  std::ostringstream o;
  o << "<svg xmlns='http://www.w3.org/2000/svg' width='" << W << "' height='" << H << "' font-family='sans-serif' font-size='12'>\n"
    << "<rect width='100%' height='100%' fill='white'/>\n"
    << "<text x='" << W / 2 << "' y='22' text-anchor='middle' font-size='15'>" << escape(c.title) << "</text>\n"
    << "<rect x='" << L << "' y='" << T << "' width='" << pw << "' height='" << ph << "' fill='none' stroke='#444'/>\n";
  for (double v : left.ticks) {  // grid and tick labels
    const double fy = T + ph * (1 - left.at(v));
    o << "<line x1='" << L << "' y1='" << fy << "' x2='" << L + pw << "' y2='" << fy << "' stroke='#ddd'/>\n"
      << "<text x='" << L - 6 << "' y='" << fy + 4 << "' text-anchor='end'>" << num(v) << "</text>\n";
  }
  for (double v : x.ticks)
    o << "<text x='" << L + pw * x.at(v) << "' y='" << T + ph + 18 << "' text-anchor='middle'>" << num(v) << "</text>\n";
  if (!c.right_label.empty())
    for (double v : right.ticks)
      o << "<text x='" << L + pw + 6 << "' y='" << T + ph * (1 - right.at(v)) + 4 << "'>" << num(v) << "</text>\n";
  o << "<text x='" << L + pw / 2 << "' y='" << H - 12 << "' text-anchor='middle'>" << escape(c.x_label) << "</text>\n"
    << "<text transform='translate(18," << T + ph / 2 << ") rotate(-90)' text-anchor='middle'>"
    << escape(c.y_label + (c.log_y && left.log ? " (log scale)" : "")) << "</text>\n";
  if (!c.right_label.empty())
    o << "<text transform='translate(" << W - 14 << "," << T + ph / 2 << ") rotate(90)' text-anchor='middle'>" << escape(c.right_label) << "</text>\n";
  int legend = 0;
  for (const auto& s : c.series) {
    const Axis& y = s.right_axis ? right : left;
    o << "<polyline fill='none' stroke='" << s.color << "' stroke-width='1.6' points='";
    for (size_t i = 0; i < s.x.size() && i < s.y.size(); ++i) {
      if (!std::isfinite(s.y[i]) || (y.log && !(s.y[i] > 0))) continue;
      o << L + pw * x.at(s.x[i]) << ',' << T + ph * (1 - y.at(s.y[i])) << ' ';
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
