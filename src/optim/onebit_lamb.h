// 1-bit Lamb (src/optim/onebit_lamb.cpp), made by make_optimizer for type "OneBitLamb".
#pragma once

#include <memory>

#include "ds/optim/optimizer.h"

namespace ds::optim {

std::unique_ptr<FlatOptimizer> make_onebit_lamb(const OptimizerConfig& config);

}  // namespace ds::optim
