// Loss pictures: round tick values on linear axes, 1-2-5 ticks on a log loss axis that keep
// every point inside, and the SVG written with them.
#include "ds/common/plot.h"

#include <gtest/gtest.h>

#include <cmath>

namespace ds {
namespace {

TEST(Plot, LinearTicksAreRoundAndCoverTheRange) {
  // The steps of a 200-step run: 0, 50, ..., 200 (not 40.8, 80.6, ...).
  EXPECT_EQ(nice_ticks(1, 200), (std::vector<double>{0, 50, 100, 150, 200}));
  const auto t = nice_ticks(0.00208, 9.486);
  EXPECT_EQ(t.front(), 0);
  EXPECT_EQ(t.back(), 10);
  for (double v : t) EXPECT_NEAR(v / 2.0, std::round(v / 2.0), 1e-9) << v;  // steps of 2
  EXPECT_GE(nice_ticks(5, 5).size(), 2u);  // a flat series still gets an axis
}

TEST(Plot, LogTicksAreOneTwoFiveAndKeepEveryPointInside) {
  // Several decades: powers of ten, the ends rounded out (today's picture: 0.00208 ... 9.486).
  const auto wide = log_ticks(0.00208, 9.486);
  ASSERT_EQ(wide.size(), 5u);
  for (size_t i = 0; i < wide.size(); ++i) EXPECT_NEAR(wide[i], std::pow(10.0, double(i) - 3), 1e-12);
  // A loss from 0.3 to 5.5: 1-2-5 ticks.
  EXPECT_EQ(log_ticks(0.3, 5.5), (std::vector<double>{0.2, 0.5, 1, 2, 5, 10}));
  const auto few = log_ticks(1.3, 4.4);  // less than a decade: its ends rounded out
  EXPECT_DOUBLE_EQ(few.front(), 1);
  EXPECT_DOUBLE_EQ(few.back(), 5);
  const auto many = log_ticks(1e-6, 30);  // many decades: powers of ten
  EXPECT_DOUBLE_EQ(many.front(), 1e-6);
  EXPECT_DOUBLE_EQ(many.back(), 100);
}

TEST(Plot, TheSvgHasTheLogAxisAndItsTicks) {
  LineChart c{"t", "step", "loss", "", {}, true};
  c.series.push_back({"training loss", "#1f77b4", {1, 2, 3, 200}, {5.6, 2.0, 0.5, 0.01}, false});
  const std::string svg = to_svg(c);
  EXPECT_NE(svg.find("loss (log scale)"), std::string::npos);
  EXPECT_NE(svg.find(">0.01<"), std::string::npos) << svg;  // a power of ten on the loss axis
  EXPECT_NE(svg.find(">200<"), std::string::npos) << svg;
  EXPECT_EQ(svg.find("nan"), std::string::npos);
}

}  // namespace
}  // namespace ds
