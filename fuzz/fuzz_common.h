// Shared by the fuzz targets: a ds::Error (any one-line error the tool would print) is the
// expected outcome of bad input; any other exception escaping our code is a finding, and so is
// every crash or sanitizer report (libFuzzer stops and saves the input).
#pragma once

#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>

#include "ds/common/error.h"

namespace ds::fuzz {

template <typename F>
void expect_only_ds_errors(F&& f) {
  try {
    f();
  } catch (const ds::Error&) {
  } catch (const std::exception& e) {
    std::fprintf(stderr, "fuzz: an exception that is not a ds::Error escaped: %s\n", e.what());
    std::abort();
  }
}

}  // namespace ds::fuzz
