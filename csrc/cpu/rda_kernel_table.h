#pragma once
// The CPU kernels of the RDA ops for one instruction set (rda_cpu_kernels.h),
// and the choice between them (rda_cpu.cpp). Arguments are checked, tensors
// contiguous and outputs allocated before a kernel is called.

#include "../rda.h"

#include <ATen/core/Tensor.h>

#include <vector>

namespace anode_ext {

struct RdaCpuKernels {
  void (*rhs)(const at::Tensor& theta, const at::Tensor& coefficients, const RdaGeometry& g, int64_t reaction,
              at::Tensor& out);
  void (*rhs_backward)(const at::Tensor& grad, const at::Tensor& theta, const at::Tensor& coefficients,
                       const RdaGeometry& g, int64_t reaction, at::Tensor& grad_theta,
                       at::Tensor& grad_coefficients);
  void (*rk_step)(const at::Tensor& theta, const at::Tensor& coefficients, const RdaGeometry& g, int64_t reaction,
                  at::ArrayRef<double> a, at::ArrayRef<double> b, double h, std::vector<at::Tensor>& outs);
  void (*rk_step_backward)(const std::vector<at::Tensor>& grads, const at::Tensor& theta,
                           const at::Tensor& coefficients, const RdaGeometry& g, int64_t reaction,
                           at::ArrayRef<double> a, at::ArrayRef<double> b, double h, at::Tensor& grad_theta,
                           at::Tensor& grad_coefficients);
};

// For any x86-64 CPU (or any CPU elsewhere): SSE2 code on x86-64.
const RdaCpuKernels& rda_cpu_kernels_baseline();

// For a CPU with AVX2; null where this compiler cannot build AVX2 code.
const RdaCpuKernels* rda_cpu_kernels_avx2();

}  // namespace anode_ext
