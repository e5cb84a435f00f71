// The 1-bit compressed all-reduce's closed form over all ranks at once (plain LibTorch), for
// the Gloo and MPI tests.
#pragma once

#include <ATen/ATen.h>

#include <vector>

namespace ds::compress {

// Rank r's input at call t.
at::Tensor input(int r, int t, int64_t n);
// The algorithm over all W ranks at once, without packing: the outputs of `calls` calls.
std::vector<at::Tensor> closed_form(int W, int64_t n, int calls);

}  // namespace ds::compress
