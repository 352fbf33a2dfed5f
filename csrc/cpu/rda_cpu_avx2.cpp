// The RDA CPU kernels compiled for AVX2 (about twice as fast as the baseline
// SSE2 build on the stencil arithmetic), chosen at run time by rda_cpu.cpp on a
// CPU that has AVX2. Every header is included before the target pragma, so only
// the kernels defined in rda_cpu_kernels.h, whose names live in anode_ext::avx2,
// are compiled for AVX2: no inline function another file shares is.

#include "../rda.h"
#include "rda_kernel_table.h"
#include "rda_lanes.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#pragma GCC push_options
#pragma GCC target("avx2")
#define ANODE_EXT_RDA_ISA avx2
#include "rda_cpu_kernels.h"
#pragma GCC pop_options

namespace anode_ext {

const RdaCpuKernels* rda_cpu_kernels_avx2() {
  return &avx2::kKernels;
}

}  // namespace anode_ext
#else
namespace anode_ext {

const RdaCpuKernels* rda_cpu_kernels_avx2() {
  return nullptr;
}

}  // namespace anode_ext
#endif
