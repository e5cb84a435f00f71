// The estimator's parts (memory.cpp, time.cpp), for each other.
#pragma once

#include "ds/estimate/estimate.h"
#include "ds/zero/precision.h"

namespace ds::estimate {

Memory estimate_memory(const Config& config, const ModelShape& shape, const Layout& layout, const Rates& rates,
                       const zero::PrecisionPolicy& precision);
int64_t activation_bytes(const ModelShape& shape, const Layout& layout, const Config& config,
                         const zero::PrecisionPolicy& precision, bool checkpointed);
StepTime estimate_time(const Config& config, const ModelShape& shape, const Layout& layout, const Rates& rates,
                       const zero::PrecisionPolicy& precision, const Memory& memory);

}  // namespace ds::estimate
