// The Python module anode_ext._C: loading it registers the torch.ops.anode_ext
// ops (csrc/ops.cpp and the kernels); it also records how the library was
// built (set by setup.py) and holds the solver's step loop and the saved-tensor
// bookkeeping of the recomputing gradient modes.

#include "bindings.h"
#include "../cpu/output_pool.h"

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
  m.def("release_pooled_outputs", &anode_ext::release_pooled_outputs,
        "Frees the CPU buffers kept for reuse by the RDA ops; returns how many bytes that was.");
  m.def("pooled_output_bytes", &anode_ext::pooled_output_bytes,
        "Bytes of freed CPU buffers the RDA ops keep for reuse.");
  anode_ext::bind_solver_step(m);
  anode_ext::bind_saved_ledger(m);
}
