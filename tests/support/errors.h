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
  }
  return "<no error>";
}

}  // namespace ds::test

#define EXPECT_ERROR_HAS(expr, text) \
  EXPECT_NE(::ds::test::error_of([&] { expr; }).find(text), std::string::npos) << ::ds::test::error_of([&] { expr; })
