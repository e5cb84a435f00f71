// Lamb (src/optim/lamb.cpp), made by make_optimizer for type "Lamb".
#pragma once

#include <memory>

#include "ds/optim/optimizer.h"

namespace ds::optim {

std::unique_ptr<FlatOptimizer> make_lamb(const OptimizerConfig& config);

}  // namespace ds::optim
