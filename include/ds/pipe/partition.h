// Which layers each pipeline stage builds: DeepSpeed's `pipeline.partition` methods as pure
// functions of the layers' descriptions.
//
//   std::vector<ds::pipe::LayerInfo> layers = ...;   // name (type) and parameter count per layer spec
//   std::vector<int> b = ds::pipe::partition_layers(layers, /*stages=*/4, "parameters");
//   // stage s builds layers [b[s], b[s + 1])
//
// Methods (DeepSpeed's meanings):
//   uniform       the same number of layers per stage (the first stages take one more when
//                 the count does not divide)
//   parameters    balance the parameter counts: the largest stage's count is as small as it
//                 can be ("best", the config's default, means the same here)
//   type:REGEX    balance the number of layers whose type matches REGEX (case-insensitive),
//                 e.g. "type:transformer" puts the same number of blocks on every stage
// Every stage gets at least one layer.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace ds::pipe {

struct LayerInfo {
  std::string type;       // the layer's class or kind, matched by type:REGEX
  int64_t parameters = 0;
};

// Stage boundaries, size stages + 1, from 0 to layers.size(). Throws ds::ConfigError for more
// stages than layers, an unknown method or a REGEX that matches no layer.
std::vector<int> partition_layers(const std::vector<LayerInfo>& layers, int stages, const std::string& method);

// Boundaries that minimise the largest part's total weight, each part non-empty (weights >= 0).
std::vector<int> partition_balanced(const std::vector<int64_t>& weights, int parts);
std::vector<int> partition_uniform(int items, int parts);

}  // namespace ds::pipe
