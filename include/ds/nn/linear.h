// y = x W^T + b for models trained with ZeRO stage 3 (DeepSpeed's LinearFunctionForZeroStage3).
//
//   at::Tensor y = ds::nn::linear(x, fc->weight, fc->bias);
//
// It saves W itself for the backward, not the transposed view torch::nn::functional::linear
// saves: a view would keep a released stage-3 parameter's gathered storage alive until the
// backward. Same values and gradients as torch's linear, at any ZeRO stage.
#pragma once

#include <ATen/core/Tensor.h>

namespace ds::nn {

at::Tensor linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias = {});

}  // namespace ds::nn
