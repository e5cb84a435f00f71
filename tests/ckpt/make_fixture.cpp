// ckpt_fixture DIR REFERENCE_JSON: saves a known checkpoint into DIR as three ranks would
// (tensor_split, AdamW states, a bf16 run) and writes the expected consolidated weights as
// text to REFERENCE_JSON, for the Python cross-check (check_fp32.py).
//
// Values are printed with 9 significant digits, which round-trips every float32 exactly.
#include <cstdio>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>

#include "ckpt_test_util.h"

int main(int argc, char** argv) {
  if (argc != 3) {
    std::cerr << "usage: ckpt_fixture DIR REFERENCE_JSON\n";
    return 2;
  }
  try {
    using namespace ds::ckpt;
    auto units = test::toy_units(8);
    auto full = test::random_state(units, 2, 2024);
    full.fp32[0][0] = -0.0f;   // a few values text formats get wrong
    full.fp32[0][1] = 1e-40f;  // subnormal
    full.fp32[0][2] = 3.4028235e38f;
    test::save_as_ranks(argv[1], units, full, {PartitionScheme::kTensorSplit, 3}, "global_step42");

    nlohmann::ordered_json ref = nlohmann::ordered_json::object();
    auto add = [&](const std::string& name, const at::Tensor& t, const char* dtype) {
      nlohmann::ordered_json values = nlohmann::ordered_json::array();
      at::Tensor flat = t.contiguous().view({-1});
      for (int64_t i = 0; i < flat.numel(); ++i) {
        char buf[32];
        if (t.scalar_type() == at::kFloat)
          std::snprintf(buf, sizeof buf, "%.9g", double(flat[i].item<float>()));
        else
          std::snprintf(buf, sizeof buf, "%lld", static_cast<long long>(flat[i].item<int64_t>()));
        values.push_back(buf);
      }
      ref[name] = {{"dtype", dtype}, {"shape", t.sizes().vec()}, {"values", values}};
    };
    for (const auto& u : units)
      for (const auto& s : u.slots) add(s.name, test::param_of(units, full, s.name), "float32");
    add("head.steps", at::arange(5, at::kLong), "int64");
    std::ofstream out(argv[2]);
    out << ref.dump(1) << "\n";
    if (!out) throw std::runtime_error(std::string("cannot write ") + argv[2]);
  } catch (const std::exception& e) {
    std::cerr << "ckpt_fixture: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
