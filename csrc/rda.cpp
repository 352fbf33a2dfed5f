// Argument checks shared by the CPU and CUDA kernels of the RDA ops.

#include "rda.h"

#include <ATen/ATen.h>

namespace anode_ext {

RdaGeometry check_rda_args(const char* op, const at::Tensor& theta, const at::Tensor& coefficients,
                           int64_t reaction) {
  const auto dtype = theta.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf || dtype == at::kBFloat16,
              op, ": theta has dtype ", dtype,
              "; expected a floating dtype (float32, float64, float16 or bfloat16)");
  // The filter's sides are checked as int64 before they are narrowed to int: a side of
  // 2^31 or more would wrap around to a small or negative one and pass.
  int64_t kh = 1;
  int64_t kw = 1;
  if (theta.dim() == 4) {
    kh = theta.size(2);
    kw = theta.size(3);
  } else if (theta.dim() == 3) {
    kw = theta.size(2);
  } else if (theta.dim() != 2) {
    TORCH_CHECK(false, op, ": theta has shape ", theta.sizes(),
                "; expected a convolution weight (Cout, Cin, kh, kw) or (Cout, Cin, k), or a "
                "linear weight (Cout, Cin)");
  }
  const bool no_taps = kh == 0 || kw == 0;
  TORCH_CHECK(no_taps || (kh <= kRdaMaxTaps && kw <= kRdaMaxTaps && kh * kw <= kRdaMaxTaps), op, ": theta has ",
              kh, "x", kw, " taps per filter; the fused kernels take at most ", kRdaMaxTaps, " (7x7)");
  const RdaGeometry g{theta.size(0), theta.size(1), no_taps ? 0 : static_cast<int>(kh),
                      no_taps ? 0 : static_cast<int>(kw)};
  TORCH_CHECK(coefficients.device() == theta.device(), op, ": coefficients are on ",
              coefficients.device(), " but theta is on ", theta.device(),
              "; expected both on one device");
  TORCH_CHECK(coefficients.scalar_type() == dtype, op, ": coefficients have dtype ",
              coefficients.scalar_type(), " but theta has dtype ", dtype,
              "; expected the same dtype");
  TORCH_CHECK(coefficients.dim() == 2 && coefficients.size(0) == 4 && coefficients.size(1) == g.cout,
              op, ": coefficients have shape ", coefficients.sizes(), "; expected (4, ", g.cout,
              "): rows d, u, v, r, one column per output channel of theta");
  TORCH_CHECK(reaction >= kReactionTanh && reaction <= kReactionNone, op, ": reaction code ",
              reaction, " is unknown; expected 0 (tanh), 1 (relu) or 2 (none)");
  return g;
}

void check_rda_tableau(const char* op, at::ArrayRef<double> a, at::ArrayRef<double> b, double h) {
  const int64_t s = static_cast<int64_t>(b.size());
  TORCH_CHECK(s >= 1 && s <= kRdaMaxStages, op, ": the tableau has ", s, " stages; expected 1 to ",
              kRdaMaxStages);
  TORCH_CHECK(static_cast<int64_t>(a.size()) == s * (s - 1) / 2, op, ": got ", a.size(), " entries of a for ", s,
              " stages; expected ", s * (s - 1) / 2, " (the strictly lower triangle, row by row)");
  for (const double x : a) {
    TORCH_CHECK(std::isfinite(x), op, ": an entry of a is ", x, "; expected finite tableau entries");
  }
  for (const double x : b) {
    TORCH_CHECK(std::isfinite(x), op, ": an entry of b is ", x, "; expected finite tableau entries");
  }
  TORCH_CHECK(std::isfinite(h), op, ": h is ", h, "; expected a finite step size");
}

void check_rda_grads(const char* op, at::TensorList grads, size_t outputs, const at::Tensor& theta) {
  TORCH_CHECK(grads.size() == outputs, op, ": got ", grads.size(), " gradients for ", outputs, " outputs");
  for (const at::Tensor& grad : grads) {
    TORCH_CHECK(grad.sizes() == theta.sizes() && grad.scalar_type() == theta.scalar_type() &&
                    grad.device() == theta.device(),
                op, ": a gradient has shape ", grad.sizes(), ", dtype ", grad.scalar_type(), " on ",
                grad.device(), "; expected theta's shape ", theta.sizes(), ", dtype and device");
  }
}

}  // namespace anode_ext
