// 0/1 Adam (src/optim/zero_one_adam.cpp), made by make_optimizer for type "ZeroOneAdam".
#pragma once

#include <memory>

#include "ds/optim/optimizer.h"

namespace ds::optim {

std::unique_ptr<FlatOptimizer> make_zero_one_adam(const OptimizerConfig& config);

}  // namespace ds::optim
