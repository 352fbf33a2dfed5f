#pragma once
// rk_error_norm: sum over the elements of ((h * sum_j w_j k_j) / (atol + rtol * max(|y|, |y1|)))^2,
// the squared scaled error estimate of an embedded Runge-Kutta pair, in one pass over its
// operands (instead of building the error, the scale and their quotient as tensors).
//
// The per-element arithmetic lives here, for the CPU loop and the CUDA kernel alike; each
// element's square is added in double.

#include <ATen/core/Tensor.h>
#include <c10/macros/Macros.h>

namespace anode_ext {

// The scaled error of one element: err / (atol + rtol * max(|y|, |y1|)). A NaN in y or
// y1 gives a NaN (which rejects the step), as torch.maximum would.
template <typename acc_t>
C10_HOST_DEVICE inline acc_t scaled_error(acc_t err, acc_t y, acc_t y1, acc_t rtol, acc_t atol) {
  const acc_t a = y < acc_t(0) ? -y : y;
  const acc_t b = y1 < acc_t(0) ? -y1 : y1;
  const acc_t larger = (a != a || a > b) ? a : b;
  return err / (atol + rtol * larger);
}

// Argument checks shared by the CPU and CUDA kernels (csrc/error_norm.cpp).
void check_rk_error_norm_args(const at::Tensor& y, const at::Tensor& y1, at::TensorList ks,
                              at::ArrayRef<double> weights, double rtol, double atol);

}  // namespace anode_ext
