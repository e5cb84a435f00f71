#include "ds/pipe/partition.h"

#include <algorithm>
#include <numeric>
#include <regex>

#include "ds/common/error.h"

namespace ds::pipe {

namespace {

// Left to right, each part as long as its weight stays <= bound and enough items remain for
// the parts after it. Empty when `bound` is too small.
std::vector<int> greedy(const std::vector<int64_t>& w, int parts, int64_t bound) {
  const int n = int(w.size());
  std::vector<int> b{0};
  int i = 0;
  for (int p = 0; p < parts; ++p) {
    const int last_allowed = n - (parts - p - 1);  // leave one item for every later part
    if (i >= last_allowed) return {};
    int64_t sum = w[size_t(i)];
    if (sum > bound) return {};
    ++i;
    while (i < last_allowed && sum + w[size_t(i)] <= bound) sum += w[size_t(i++)];
    if (p + 1 == parts && i != n) return {};
    b.push_back(i);
  }
  return b;
}

// The smallest bound the greedy split meets: between the largest item and the total.
int64_t smallest_bound(const std::vector<int64_t>& w, int parts) {
  int64_t lo = *std::max_element(w.begin(), w.end());
  int64_t hi = std::accumulate(w.begin(), w.end(), int64_t(0));
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (greedy(w, parts, mid).empty()) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

}  // namespace

std::vector<int> partition_uniform(int items, int parts) {
  if (parts < 1 || items < parts)
    throw ConfigError(ds::str("cannot split ", items, " layers into ", parts, " pipeline stages: every stage needs a layer"));
  std::vector<int> b{0};
  const int base = items / parts, extra = items % parts;
  for (int p = 0; p < parts; ++p) b.push_back(b.back() + base + (p < extra ? 1 : 0));
  return b;
}

std::vector<int> partition_balanced(const std::vector<int64_t>& weights, int parts) {
  partition_uniform(int(weights.size()), parts);  // the same size checks
  for (int64_t x : weights)
    if (x < 0) throw ConfigError("pipeline partition: negative layer weight");
  // Stage by stage: the first stage takes the longest run that stays within the smallest
  // largest-stage bound for everything still to place, and the rest is balanced the same
  // way, so the stages after the heaviest are balanced too (not just filled greedily).
  std::vector<int> b{0};
  for (int p = 0; p < parts; ++p) {
    const std::vector<int64_t> rest(weights.begin() + b.back(), weights.end());
    const std::vector<int> cut = greedy(rest, parts - p, smallest_bound(rest, parts - p));
    b.push_back(b.back() + cut[1]);
  }
  return b;
}

std::vector<int> partition_layers(const std::vector<LayerInfo>& layers, int stages, const std::string& method) {
  const int n = int(layers.size());
  if (stages > n)
    throw ConfigError(ds::str("pipeline.stages is ", stages, " but the model has ", n,
                              " layers: use at most ", n, " stages"));
  if (method == "uniform") return partition_uniform(n, stages);
  std::vector<int64_t> w;
  if (method == "parameters" || method == "best") {  // "best": DeepSpeed's config default, balanced by parameters
    for (const LayerInfo& l : layers) w.push_back(l.parameters);
  } else if (method.rfind("type:", 0) == 0) {
    const std::string pattern = method.substr(5);
    std::regex re;
    try {
      re = std::regex(pattern, std::regex::icase);
    } catch (const std::regex_error& e) {
      throw ConfigError(ds::str("pipeline.partition '", method, "': not a regular expression (", e.what(), ")"));
    }
    int64_t matched = 0;
    for (const LayerInfo& l : layers) matched += w.emplace_back(std::regex_search(l.type, re) ? 1 : 0);
    if (matched == 0) {
      std::string types;
      for (const LayerInfo& l : layers)
        if (types.find(l.type) == std::string::npos) types += (types.empty() ? "" : ", ") + l.type;
      throw ConfigError(ds::str("pipeline.partition '", method, "' matches none of the layer types (", types, ")"));
    }
  } else {
    throw ConfigError(ds::str("pipeline.partition '", method, "': expected parameters, best, uniform or type:REGEX"));
  }
  return partition_balanced(w, stages);
}

}  // namespace ds::pipe
