// ds::Progress: silent when the phase is quick, "how far" lines and an end line when slow
// (the thresholds come from DS_PROGRESS_QUIET / DS_PROGRESS_EVERY, set to 0 here).
#include "ds/common/progress.h"

#include <gtest/gtest.h>

#include <cstdlib>

namespace ds {
namespace {

std::string run(bool enabled, const char* quiet) {
  ::setenv("DS_PROGRESS_QUIET", quiet, 1);
  ::setenv("DS_PROGRESS_EVERY", "0", 1);
  testing::internal::CaptureStdout();
  {
    Progress p(enabled, "writing", 4096.0 * 1024, Progress::Unit::kBytes);
    for (int i = 0; i < 4; ++i) p.advance(1024.0 * 1024);
    p.finish();
  }
  ::unsetenv("DS_PROGRESS_QUIET");
  ::unsetenv("DS_PROGRESS_EVERY");
  return testing::internal::GetCapturedStdout();
}

TEST(Progress, QuickPhasesAreSilentSlowOnesSayHowFarAndWhenDone) {
  EXPECT_EQ(run(true, "1000"), "");  // ends before the quiet time
  EXPECT_EQ(run(false, "0"), "");    // not this rank's to say
  const std::string out = run(true, "0");
  EXPECT_NE(out.find("[ds] writing: 25% (1.00 MiB of 4.00 MiB) after "), std::string::npos) << out;
  EXPECT_NE(out.find("[ds] writing: 100% (4.00 MiB of 4.00 MiB) after "), std::string::npos) << out;
  EXPECT_NE(out.find("[ds] writing: done (4.00 MiB) in "), std::string::npos) << out;
  testing::internal::CaptureStdout();
  {
    Progress p(true, "counting", 3, Progress::Unit::kCount, "units");
    ::setenv("DS_PROGRESS_QUIET", "0", 1);  // read at construction: still the default here
    p.advance();
  }  // destroyed without finish(): nothing
  ::unsetenv("DS_PROGRESS_QUIET");
  EXPECT_EQ(testing::internal::GetCapturedStdout(), "");
}

}  // namespace
}  // namespace ds
