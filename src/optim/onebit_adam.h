// 1-bit Adam (src/optim/onebit_adam.cpp), made by make_optimizer for type "OneBitAdam".
#pragma once

#include <memory>

#include "ds/optim/optimizer.h"

namespace ds::optim {

std::unique_ptr<FlatOptimizer> make_onebit_adam(const OptimizerConfig& config);

}  // namespace ds::optim
