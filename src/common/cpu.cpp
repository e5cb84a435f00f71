#include "ds/common/cpu.h"

#include <cstdint>
#include <string>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

namespace ds {

namespace {

#if defined(__x86_64__) || defined(__i386__)
uint64_t xgetbv0() {
  uint32_t lo = 0, hi = 0;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (uint64_t(hi) << 32) | lo;
}

CpuFeatures read_features() {
  CpuFeatures f;
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
  const bool osxsave = (c >> 27) & 1;
  f.fma = (c >> 12) & 1;
  f.f16c = (c >> 29) & 1;
  const uint64_t xcr0 = osxsave ? xgetbv0() : 0;
  const bool os_avx = (xcr0 & 0x6) == 0x6;              // XMM and YMM state
  const bool os_avx512 = os_avx && (xcr0 & 0xE0) == 0xE0;  // opmask, ZMM_Hi256, Hi16_ZMM
  const bool os_amx = (xcr0 & 0x60000) == 0x60000;       // XTILECFG, XTILEDATA
  unsigned max_leaf = __get_cpuid_max(0, nullptr);
  if (max_leaf < 7) return f;
  __cpuid_count(7, 0, a, b, c, d);
  f.avx2 = os_avx && ((b >> 5) & 1);
  f.avx512f = os_avx512 && ((b >> 16) & 1);
  f.avx512bw = os_avx512 && ((b >> 30) & 1);
  f.avx512vl = os_avx512 && ((b >> 31) & 1);
  f.avx512_vnni = os_avx512 && ((c >> 11) & 1);
  f.avx512_fp16 = os_avx512 && ((d >> 23) & 1);
  f.amx_bf16 = os_amx && ((d >> 22) & 1);
  f.amx_tile = os_amx && ((d >> 24) & 1);
  const unsigned sub_leaves = a;
  if (sub_leaves >= 1) {
    __cpuid_count(7, 1, a, b, c, d);
    f.avx512_bf16 = os_avx512 && ((a >> 5) & 1);
    f.amx_fp16 = os_amx && ((a >> 21) & 1);
  }
  return f;
}
#else
CpuFeatures read_features() { return {}; }
#endif

}  // namespace

std::string CpuFeatures::describe() const {
  std::string s;
  auto add = [&](const std::string& part) { s += (s.empty() ? "" : ", ") + part; };
  if (avx512f) add(std::string("AVX-512") + (avx512_vnni ? " (VNNI)" : ""));
  else if (avx2) add("AVX2");
  else add("no AVX2");
  add(avx512_bf16 ? "AVX512_BF16" : "no AVX512_BF16");
  if (amx_tile) add(std::string("AMX") + (amx_bf16 ? "-BF16" : "") + (amx_fp16 ? ", AMX-FP16" : ""));
  else add("no AMX");
  if (avx512_fp16) add("AVX512_FP16");
  return s;
}

const CpuFeatures& cpu_features() {
  static const CpuFeatures f = read_features();
  return f;
}

}  // namespace ds
