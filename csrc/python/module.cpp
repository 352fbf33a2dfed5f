// The Python module anode_ext._C: loading it registers the torch.ops.anode_ext
// ops (csrc/ops.cpp and the kernels); it also records how the library was
// built (set by setup.py) and holds the solver's step loop and the saved-tensor
// bookkeeping of the recomputing gradient modes.

#include "bindings.h"

#ifndef ANODE_EXT_TORCH_VERSION
#error "ANODE_EXT_TORCH_VERSION must be defined by setup.py"
#endif
#ifndef ANODE_EXT_CUDA_VERSION
#define ANODE_EXT_CUDA_VERSION ""
#endif
#ifndef ANODE_EXT_CUDA_ARCH_LIST
#define ANODE_EXT_CUDA_ARCH_LIST ""
#endif

PYBIND11_MODULE(_C, m) {
  m.doc() = "Compiled kernels of anode_ext; the ops are reached through torch.ops.anode_ext.";
  m.attr("torch_version") = ANODE_EXT_TORCH_VERSION;
  m.attr("cuda_version") = ANODE_EXT_CUDA_VERSION;
  m.attr("cuda_arch_list") = ANODE_EXT_CUDA_ARCH_LIST;
#ifdef _OPENMP
  m.attr("openmp") = 1;
#else
  m.attr("openmp") = 0;
#endif
  anode_ext::bind_solver_step(m);
  anode_ext::bind_saved_ledger(m);
}
