// The one place where every anode_ext op schema is declared. CPU kernels are
// registered in csrc/cpu/, CUDA kernels in csrc/cuda/, and the dispatcher picks
// the kernel by device, so no shared code depends on whether CUDA was built.

#include <torch/library.h>

TORCH_LIBRARY(anode_ext, m) {
  m.def("rk_combine(Tensor y, Tensor[] ks, float[] weights, float h) -> Tensor");
  m.def(
      "rk_combine_out(Tensor(a!) out, Tensor y, Tensor[] ks, float[] weights, float h) "
      "-> ()");
  m.def("rk_combine_backward(Tensor grad, float[] weights, float h) -> Tensor[]");
  // The squared scaled error estimate of an embedded pair's step, summed (a 0-d float64).
  m.def(
      "rk_error_norm(Tensor y, Tensor y1, Tensor[] ks, float[] weights, float h, float rtol, "
      "float atol) -> Tensor");
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
