// The one place where every anode_ext op schema is declared. CPU kernels are
// registered in csrc/cpu/, CUDA kernels in csrc/cuda/, and the dispatcher picks
// the kernel by device, so no shared code depends on whether CUDA was built.
//
// This file also makes the library importable as the Python module
// anode_ext._C and records how it was built (set by setup.py).

#include <Python.h>
#include <torch/library.h>

#ifndef ANODE_EXT_TORCH_VERSION
#error "ANODE_EXT_TORCH_VERSION must be defined by setup.py"
#endif
#ifndef ANODE_EXT_CUDA_VERSION
#define ANODE_EXT_CUDA_VERSION ""
#endif
#ifndef ANODE_EXT_CUDA_ARCH_LIST
#define ANODE_EXT_CUDA_ARCH_LIST ""
#endif

TORCH_LIBRARY(anode_ext, m) {
  m.def("rk_combine(Tensor y, Tensor[] ks, float[] weights, float h) -> Tensor");
  m.def(
      "rk_combine_out(Tensor(a!) out, Tensor y, Tensor[] ks, float[] weights, float h) "
      "-> ()");
  m.def("rk_combine_backward(Tensor grad, float[] weights, float h) -> Tensor[]");
  // ANODEv2 weight dynamics: reaction is 0 (tanh), 1 (relu) or 2 (none);
  // coefficients are (4, Cout): rows d, u, v, r.
  m.def("rda_rhs(Tensor theta, Tensor coefficients, int reaction) -> Tensor");
  m.def(
      "rda_rhs_backward(Tensor grad, Tensor theta, Tensor coefficients, int reaction) "
      "-> (Tensor, Tensor)");
  // One RK step of the weights: returns the stage inputs theta^(1..s-1), then theta_next.
  // a is the strictly lower triangle of the tableau, row by row.
  m.def(
      "rda_rk_step(Tensor theta, Tensor coefficients, int reaction, float[] a, float[] b, "
      "float h) -> Tensor[]");
  m.def(
      "rda_rk_step_backward(Tensor[] grads, Tensor theta, Tensor coefficients, int reaction, "
      "float[] a, float[] b, float h) -> (Tensor, Tensor)");
}

extern "C" {
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT, "_C",
      "Compiled kernels of anode_ext; the ops are reached through torch.ops.anode_ext.",
      -1, nullptr};
  PyObject* module = PyModule_Create(&module_def);
  if (module == nullptr) {
    return nullptr;
  }
#ifdef _OPENMP
  const long openmp = 1;
#else
  const long openmp = 0;
#endif
  if (PyModule_AddStringConstant(module, "torch_version", ANODE_EXT_TORCH_VERSION) < 0 ||
      PyModule_AddStringConstant(module, "cuda_version", ANODE_EXT_CUDA_VERSION) < 0 ||
      PyModule_AddStringConstant(module, "cuda_arch_list", ANODE_EXT_CUDA_ARCH_LIST) < 0 ||
      PyModule_AddIntConstant(module, "openmp", openmp) < 0) {
    Py_DECREF(module);
    return nullptr;
  }
  return module;
}
}
