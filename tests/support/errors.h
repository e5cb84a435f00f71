// Asserting on error messages: EXPECT_ERROR_HAS(expr, "text") passes when evaluating expr
// throws a ds::Error whose message contains "text"; otherwise it prints what happened.
#pragma once

#include <gtest/gtest.h>

#include <string>

#include "ds/common/error.h"

namespace ds::test {

template <typename Fn>
std::string error_of(Fn fn) {
  try {
    fn();
  } catch (const ds::Error& e) {
    return e.what();
  } catch (const std::exception& e) {
    return std::string("<not a ds::Error: ") + e.what() + ">";
  }
  return "<no error>";
}

}  // namespace ds::test

// expr runs once; more context may follow with <<.
#define EXPECT_ERROR_HAS(expr, text)                                                \
  if (const std::string ds_error_text_ = ::ds::test::error_of([&] { expr; }); false) { \
  } else                                                                            \
    EXPECT_NE(ds_error_text_.find(text), std::string::npos) << ds_error_text_
