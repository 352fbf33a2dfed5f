#pragma once
// rk_combine: out = y + h * sum_i w_i * k_i.
//
// The per-element arithmetic lives here, written once for both the CPU loop
// (instantiated with scalars and with at::vec::Vectorized) and the CUDA kernel,
// so that the CPU tests check the arithmetic the GPU runs. Both sides are built
// without floating-point contraction (-ffp-contract=off, --fmad=false), which
// makes the CPU and CUDA results identical bit for bit.

#include <ATen/core/Tensor.h>
#include <c10/macros/Macros.h>

#include <vector>

namespace anode_ext {

// One term of the stage sum: acc + coeff * k, rounded twice on every device.
template <typename T>
C10_HOST_DEVICE inline T rk_accumulate(T acc, T coeff, T k) {
  return acc + coeff * k;
}

// The gradient of rk_combine with respect to one k: coeff * grad.
template <typename T>
C10_HOST_DEVICE inline T rk_scale(T coeff, T grad) {
  return coeff * grad;
}

// The coefficient h * w_i, formed in double so that every dtype sees the same
// value before it is rounded to the accumulation type.
template <typename acc_t>
inline std::vector<acc_t> rk_coefficients(at::ArrayRef<double> weights, double h) {
  std::vector<acc_t> coeffs;
  coeffs.reserve(weights.size());
  for (double w : weights) {
    coeffs.push_back(static_cast<acc_t>(h * w));
  }
  return coeffs;
}

// Argument checks shared by the CPU and CUDA kernels (csrc/rk_combine.cpp).
void check_rk_combine_args(const at::Tensor& y, at::TensorList ks,
                           at::ArrayRef<double> weights);
void check_rk_combine_out(const at::Tensor& out, const at::Tensor& y,
                          at::TensorList ks);
void check_rk_combine_backward_args(const at::Tensor& grad,
                                    at::ArrayRef<double> weights);

// Writes y + h * sum_i w_i k_i into a dense `out`: the device-specific part.
using CombineInto = void (*)(const at::Tensor& out, const at::Tensor& y, at::TensorList ks,
                             at::ArrayRef<double> weights, double h);

// rk_combine and rk_combine_out around a device's CombineInto: argument checks and
// the choice of a dense destination, shared by the CPU and CUDA registrations.
at::Tensor rk_combine_with(CombineInto combine_into, const at::Tensor& y, at::TensorList ks,
                           at::ArrayRef<double> weights, double h);
void rk_combine_out_with(CombineInto combine_into, const at::Tensor& out, const at::Tensor& y,
                         at::TensorList ks, at::ArrayRef<double> weights, double h);

// rk_combine and rk_combine_backward through the dispatcher, autograd included:
// the entry points for C++ callers (the autograd formulas, the solver step).
at::Tensor call_rk_combine(const at::Tensor& y, at::TensorList ks, at::ArrayRef<double> weights,
                           double h);
std::vector<at::Tensor> call_rk_combine_backward(const at::Tensor& grad,
                                                 at::ArrayRef<double> weights, double h);

// Returns t laid out exactly like `like` (same strides), copying only when the
// layouts differ, so kernels can walk every operand with one flat index.
at::Tensor match_layout(const at::Tensor& t, const at::Tensor& like);

// True when `t` is dense and can be written through a flat index.
bool is_flat_writable(const at::Tensor& t);

}  // namespace anode_ext
