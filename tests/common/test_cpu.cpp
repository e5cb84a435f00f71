// CPU feature detection (cpuid + xgetbv) against an independent reader: the kernel's flags in
// /proc/cpuinfo, which also reflect what the OS enabled.
#include <gtest/gtest.h>

#include <fstream>
#include <set>
#include <utility>
#include <sstream>
#include <string>

#include "ds/common/cpu.h"

namespace ds {
namespace {

std::set<std::string> kernel_flags() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("flags", 0) == 0) {
      std::istringstream words(line.substr(line.find(':') + 1));
      std::set<std::string> out;
      for (std::string w; words >> w;) out.insert(w);
      return out;
    }
  return {};
}

TEST(CpuFeatures, AgreeWithTheKernelsFlags) {
  const std::set<std::string> flags = kernel_flags();
  if (flags.empty()) GTEST_SKIP() << "no flags line in /proc/cpuinfo";
  const CpuFeatures& cpu = cpu_features();
  std::printf("this CPU: %s\n", cpu.describe().c_str());
  auto has = [&](const char* f) { return flags.count(f) > 0; };
  const std::pair<bool, const char*> expected[] = {
      {cpu.avx2, "avx2"},         {cpu.fma, "fma"},           {cpu.f16c, "f16c"},
      {cpu.avx512f, "avx512f"},   {cpu.avx512bw, "avx512bw"}, {cpu.avx512vl, "avx512vl"},
      {cpu.avx512_vnni, "avx512_vnni"}, {cpu.avx512_bf16, "avx512_bf16"}, {cpu.avx512_fp16, "avx512_fp16"},
      {cpu.amx_tile, "amx_tile"}, {cpu.amx_bf16, "amx_bf16"}, {cpu.amx_fp16, "amx_fp16"}};
  for (const auto& [detected, flag] : expected) EXPECT_EQ(detected, has(flag)) << flag;
  EXPECT_EQ(cpu.native_bf16(), has("avx512_bf16") || has("amx_bf16"));
  EXPECT_FALSE(cpu.describe().empty());
}

}  // namespace
}  // namespace ds
