// What this CPU can compute natively, read with cpuid (and xgetbv: the OS must also save the
// registers), without measuring anything. The machines this project runs on change: an AVX2
// EPYC (bf16 GEMMs emulated, ~30x slower than fp32), AVX-512 Xeons with or without AMX, EPYCs
// with AVX512_BF16 — and a hypervisor may hide what the silicon has.
//
//   const ds::CpuFeatures& cpu = ds::cpu_features();
//   if (cpu.native_bf16()) ...                        // AVX512_BF16 or AMX-BF16
//   std::cout << cpu.describe();                      // "AVX-512 (VNNI), no AVX512_BF16, no AMX"
#pragma once

#include <string>

namespace ds {

struct CpuFeatures {
  bool avx2 = false, fma = false, f16c = false;
  bool avx512f = false, avx512bw = false, avx512vl = false, avx512_vnni = false;
  bool avx512_bf16 = false;  // VDPBF16PS: bf16 dot products into fp32
  bool avx512_fp16 = false;
  bool amx_tile = false, amx_bf16 = false, amx_fp16 = false;

  // bf16 dot products in hardware (what makes bf16 GEMMs faster than fp32).
  bool native_bf16() const { return avx512_bf16 || amx_bf16; }
  // fp16 GEMMs in hardware (AMX-FP16, AVX512_FP16).
  bool native_fp16() const { return amx_fp16 || avx512_fp16; }
  std::string describe() const;
};

// Read once per process.
const CpuFeatures& cpu_features();

}  // namespace ds
