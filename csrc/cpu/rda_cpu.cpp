// The CPU ops of the RDA dynamics: argument checks and outputs here, the
// kernels in rda_cpu_kernels.h, compiled for AVX2 and for the baseline
// instruction set and chosen once by what the CPU has.

#include "../rda.h"
#include "output_pool.h"
#include "rda_kernel_table.h"

#include <ATen/ATen.h>
#include <torch/library.h>

#include <cstdlib>
#include <string>

namespace anode_ext {
namespace {

bool cpu_has_avx2() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2");
#else
  return false;
#endif
}

// ANODE_EXT_RDA_BASELINE=1 in the environment at the first call takes the
// baseline kernels on any CPU, so that the tests can compare the two builds.
bool baseline_requested() {
  const char* value = std::getenv("ANODE_EXT_RDA_BASELINE");
  return value != nullptr && std::string(value) == "1";
}

const RdaCpuKernels& kernels() {
  static const RdaCpuKernels& chosen = rda_cpu_kernels_avx2() != nullptr && cpu_has_avx2() && !baseline_requested()
                                           ? *rda_cpu_kernels_avx2()
                                           : rda_cpu_kernels_baseline();
  return chosen;
}

at::Tensor rda_rhs_cpu(const at::Tensor& theta, const at::Tensor& coefficients, int64_t reaction) {
  const RdaGeometry g = check_rda_args("rda_rhs", theta, coefficients, reaction);
  const at::Tensor th = theta.contiguous();
  at::Tensor out = pooled_empty_like(th);
  if (th.numel() > 0) {
    kernels().rhs(th, coefficients.contiguous(), g, reaction, out);
  }
  return out;
}

std::tuple<at::Tensor, at::Tensor> rda_rhs_backward_cpu(const at::Tensor& grad, const at::Tensor& theta,
                                                        const at::Tensor& coefficients, int64_t reaction) {
  const RdaGeometry g = check_rda_args("rda_rhs_backward", theta, coefficients, reaction);
  check_rda_grads("rda_rhs_backward", grad, 1, theta);
  const at::Tensor th = theta.contiguous();
  const at::Tensor co = coefficients.contiguous();
  at::Tensor grad_theta = pooled_empty_like(th);
  if (th.numel() == 0) {  // no taps to differentiate, and no work in proportion to Cout x Cin
    return {grad_theta, at::zeros_like(co)};
  }
  at::Tensor grad_coefficients = at::empty_like(co);
  kernels().rhs_backward(grad.contiguous(), th, co, g, reaction, grad_theta, grad_coefficients);
  return {grad_theta, grad_coefficients};
}

std::vector<at::Tensor> rda_rk_step_cpu(const at::Tensor& theta, const at::Tensor& coefficients,
                                        int64_t reaction, at::ArrayRef<double> a,
                                        at::ArrayRef<double> b, double h) {
  const RdaGeometry g = check_rda_args("rda_rk_step", theta, coefficients, reaction);
  check_rda_tableau("rda_rk_step", a, b, h);
  const at::Tensor th = theta.contiguous();
  std::vector<at::Tensor> outs;
  for (size_t i = 0; i < b.size(); ++i) {
    outs.push_back(pooled_empty_like(th));
  }
  if (th.numel() > 0) {
    kernels().rk_step(th, coefficients.contiguous(), g, reaction, a, b, h, outs);
  }
  return outs;
}

std::tuple<at::Tensor, at::Tensor> rda_rk_step_backward_cpu(at::TensorList grads, const at::Tensor& theta,
                                                            const at::Tensor& coefficients, int64_t reaction,
                                                            at::ArrayRef<double> a, at::ArrayRef<double> b,
                                                            double h) {
  const RdaGeometry g = check_rda_args("rda_rk_step_backward", theta, coefficients, reaction);
  check_rda_tableau("rda_rk_step_backward", a, b, h);
  check_rda_grads("rda_rk_step_backward", grads, b.size(), theta);
  const at::Tensor th = theta.contiguous();
  const at::Tensor co = coefficients.contiguous();
  at::Tensor grad_theta = pooled_empty_like(th);
  if (th.numel() == 0) {
    return {grad_theta, at::zeros_like(co)};
  }
  std::vector<at::Tensor> gr;
  for (const at::Tensor& t : grads) {
    gr.push_back(t.contiguous());
  }
  at::Tensor grad_coefficients = at::empty_like(co);
  kernels().rk_step_backward(gr, th, co, g, reaction, a, b, h, grad_theta, grad_coefficients);
  return {grad_theta, grad_coefficients};
}

}  // namespace

TORCH_LIBRARY_IMPL(anode_ext, CPU, m) {
  m.impl("rda_rhs", &rda_rhs_cpu);
  m.impl("rda_rhs_backward", &rda_rhs_backward_cpu);
  m.impl("rda_rk_step", &rda_rk_step_cpu);
  m.impl("rda_rk_step_backward", &rda_rk_step_backward_cpu);
}

}  // namespace anode_ext
