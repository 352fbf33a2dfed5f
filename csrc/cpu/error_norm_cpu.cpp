// CPU kernel of rk_error_norm: one pass over the operands, split across threads by
// at::parallel_reduce, each thread adding its elements' squares in double.

#include "../error_norm.h"
#include "../rk_combine.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

namespace anode_ext {
namespace {

constexpr int64_t kGrainSize = 1 << 15;

at::Tensor rk_error_norm_cpu(const at::Tensor& y, const at::Tensor& y1, at::TensorList ks,
                             at::ArrayRef<double> weights, double h, double rtol, double atol) {
  check_rk_error_norm_args(y, y1, ks, weights, rtol, atol);
  const at::Tensor like = y.is_non_overlapping_and_dense() ? y : y.contiguous();
  const at::Tensor y1_flat = match_layout(y1, like);
  std::vector<at::Tensor> ks_flat;
  for (const at::Tensor& k : ks) {
    ks_flat.push_back(match_layout(k, like));
  }
  double total = 0.0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "rk_error_norm_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto coeffs = rk_coefficients<acc_t>(weights, h);
    std::vector<const scalar_t*> k_ptrs;
    for (const at::Tensor& k : ks_flat) {
      k_ptrs.push_back(k.const_data_ptr<scalar_t>());
    }
    const scalar_t* y_ptr = like.const_data_ptr<scalar_t>();
    const scalar_t* y1_ptr = y1_flat.const_data_ptr<scalar_t>();
    const acc_t r = static_cast<acc_t>(rtol);
    const acc_t a = static_cast<acc_t>(atol);
    total = at::parallel_reduce(
        0, like.numel(), kGrainSize, 0.0,
        [&](int64_t begin, int64_t end, double partial) {
          for (int64_t i = begin; i < end; ++i) {
            acc_t err = acc_t(0);
            for (size_t j = 0; j < k_ptrs.size(); ++j) {
              err = rk_accumulate(err, coeffs[j], static_cast<acc_t>(k_ptrs[j][i]));
            }
            const double e = static_cast<double>(
                scaled_error(err, static_cast<acc_t>(y_ptr[i]), static_cast<acc_t>(y1_ptr[i]), r, a));
            partial += e * e;
          }
          return partial;
        },
        [](double x, double z) { return x + z; });
  });
  return at::scalar_tensor(total, y.options().dtype(at::kDouble));
}

}  // namespace

TORCH_LIBRARY_IMPL(anode_ext, CPU, m) {
  m.impl("rk_error_norm", &rk_error_norm_cpu);
}

}  // namespace anode_ext
