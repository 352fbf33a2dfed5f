// Argument checks of rk_error_norm, shared by the CPU and CUDA kernels. Every message
// names what was wrong and what was expected.

#include "error_norm.h"

#include "rk_combine.h"

#include <ATen/ATen.h>

#include <cmath>

namespace anode_ext {

void check_rk_error_norm_args(const at::Tensor& y, const at::Tensor& y1, at::TensorList ks,
                              at::ArrayRef<double> weights, double rtol, double atol) {
  check_rk_combine_args(y, ks, weights);
  TORCH_CHECK(y1.device() == y.device() && y1.scalar_type() == y.scalar_type() && y1.sizes() == y.sizes(),
              "rk_error_norm: y1 has shape ", y1.sizes(), ", dtype ", y1.scalar_type(), " and device ",
              y1.device(), "; expected y's (", y.sizes(), ", ", y.scalar_type(), ", ", y.device(), ")");
  TORCH_CHECK(std::isfinite(rtol) && rtol >= 0 && std::isfinite(atol) && atol >= 0 && (rtol > 0 || atol > 0),
              "rk_error_norm: got rtol ", rtol, " and atol ", atol,
              "; expected finite numbers >= 0, not both zero");
}

}  // namespace anode_ext
