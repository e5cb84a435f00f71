#include <gtest/gtest.h>

#include "ds/common/error.h"
#include "ds/common/strings.h"

#include <unistd.h>

TEST(Strings, EditDistanceCountsInsertDeleteSubstitute) {
  EXPECT_EQ(ds::edit_distance("", ""), 0u);
  EXPECT_EQ(ds::edit_distance("stage", "stage"), 0u);
  EXPECT_EQ(ds::edit_distance("stgae", "stage"), 2u);
  EXPECT_EQ(ds::edit_distance("kitten", "sitting"), 3u);
}

TEST(Strings, NearestSuggestsPlausibleTyposOnly) {
  std::vector<std::string> keys = {"stage", "offload_param", "offload_optimizer", "reduce_bucket_size"};
  EXPECT_EQ(ds::nearest("stgae", keys), "stage");
  EXPECT_EQ(ds::nearest("offload_parm", keys), "offload_param");
  EXPECT_EQ(ds::nearest("completely_unrelated", keys), "");
}

TEST(Strings, SplitKeepsEmptyFields) {
  EXPECT_EQ(ds::split("a,b,,c", ','), (std::vector<std::string>{"a", "b", "", "c"}));
  EXPECT_EQ(ds::split("", ','), (std::vector<std::string>{""}));
}

TEST(Strings, FormatBytesUsesBinaryUnits) {
  EXPECT_EQ(ds::format_bytes(512), "512 B");
  EXPECT_EQ(ds::format_bytes(1536), "1.50 KiB");
}

TEST(Errors, CheckThrowsWithLocationAndValues) {
  try {
    int n = 7;
    DS_CHECK(n % 2 == 0, "n=", n, " is odd");
    FAIL() << "no throw";
  } catch (const ds::Error& e) {
    std::string m = e.what();
    EXPECT_NE(m.find("n=7 is odd"), std::string::npos) << m;
    EXPECT_NE(m.find("test_strings.cpp"), std::string::npos) << m;
  }
}

TEST(Errors, CheckSysThrowsWithStrerror) {
  EXPECT_THROW(DS_CHECK_SYS(::close(-1), "closing fd -1"), ds::SystemError);
}
