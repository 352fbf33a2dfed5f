// The RDA CPU kernels for the instruction set the extension is compiled for.

#define ANODE_EXT_RDA_ISA baseline
#include "rda_cpu_kernels.h"

namespace anode_ext {

const RdaCpuKernels& rda_cpu_kernels_baseline() {
  return baseline::kKernels;
}

}  // namespace anode_ext
