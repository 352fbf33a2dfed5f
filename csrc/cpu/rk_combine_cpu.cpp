// CPU kernels of rk_combine and its backward: one pass over memory, split
// across threads by at::parallel_for and vectorized with at::vec. Half types
// are widened to float for the arithmetic.

#include "../rk_combine.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <type_traits>

namespace anode_ext {
namespace {

// Elements per task: large enough that a thread streams for tens of
// microseconds, small enough that two threads share a 1 MiB tensor.
constexpr int64_t kGrainSize = 1 << 15;

template <typename scalar_t>
using acc_type = at::opmath_type<scalar_t>;

template <typename scalar_t>
constexpr bool widens = !std::is_same_v<scalar_t, acc_type<scalar_t>>;

template <typename scalar_t>
void combine_range(scalar_t* out, const scalar_t* y, const std::vector<const scalar_t*>& ks,
                   const std::vector<acc_type<scalar_t>>& coeffs, int64_t begin,
                   int64_t end) {
  using acc_t = acc_type<scalar_t>;
  using Vec = at::vec::Vectorized<scalar_t>;
  using AccVec = at::vec::Vectorized<acc_t>;
  const size_t n = ks.size();
  std::vector<AccVec> coeff_vecs(coeffs.begin(), coeffs.end());
  int64_t i = begin;
  for (; i + Vec::size() <= end; i += Vec::size()) {
    if constexpr (widens<scalar_t>) {
      auto [lo, hi] = at::vec::convert_to_float<scalar_t>(Vec::loadu(y + i));
      for (size_t j = 0; j < n; ++j) {
        auto [k_lo, k_hi] = at::vec::convert_to_float<scalar_t>(Vec::loadu(ks[j] + i));
        lo = rk_accumulate(lo, coeff_vecs[j], k_lo);
        hi = rk_accumulate(hi, coeff_vecs[j], k_hi);
      }
      at::vec::convert_from_float<scalar_t>(lo, hi).store(out + i);
    } else {
      Vec acc = Vec::loadu(y + i);
      for (size_t j = 0; j < n; ++j) {
        acc = rk_accumulate(acc, coeff_vecs[j], Vec::loadu(ks[j] + i));
      }
      acc.store(out + i);
    }
  }
  for (; i < end; ++i) {
    acc_t acc = static_cast<acc_t>(y[i]);
    for (size_t j = 0; j < n; ++j) {
      acc = rk_accumulate(acc, coeffs[j], static_cast<acc_t>(ks[j][i]));
    }
    out[i] = static_cast<scalar_t>(acc);
  }
}

template <typename scalar_t>
void scale_range(const std::vector<scalar_t*>& outs, const scalar_t* grad,
                 const std::vector<acc_type<scalar_t>>& coeffs, int64_t begin, int64_t end) {
  using acc_t = acc_type<scalar_t>;
  using Vec = at::vec::Vectorized<scalar_t>;
  using AccVec = at::vec::Vectorized<acc_t>;
  const size_t n = outs.size();
  std::vector<AccVec> coeff_vecs(coeffs.begin(), coeffs.end());
  int64_t i = begin;
  for (; i + Vec::size() <= end; i += Vec::size()) {
    if constexpr (widens<scalar_t>) {
      auto [lo, hi] = at::vec::convert_to_float<scalar_t>(Vec::loadu(grad + i));
      for (size_t j = 0; j < n; ++j) {
        at::vec::convert_from_float<scalar_t>(rk_scale(coeff_vecs[j], lo),
                                              rk_scale(coeff_vecs[j], hi))
            .store(outs[j] + i);
      }
    } else {
      Vec g = Vec::loadu(grad + i);
      for (size_t j = 0; j < n; ++j) {
        rk_scale(coeff_vecs[j], g).store(outs[j] + i);
      }
    }
  }
  for (; i < end; ++i) {
    const acc_t g = static_cast<acc_t>(grad[i]);
    for (size_t j = 0; j < n; ++j) {
      outs[j][i] = static_cast<scalar_t>(rk_scale(coeffs[j], g));
    }
  }
}

// Writes y + h * sum_i w_i k_i into `out`, which must be dense.
void combine_into(const at::Tensor& out, const at::Tensor& y, at::TensorList ks,
                  at::ArrayRef<double> weights, double h) {
  const int64_t numel = out.numel();
  if (numel == 0) {
    return;
  }
  const at::Tensor y_flat = match_layout(y, out);
  std::vector<at::Tensor> ks_flat;
  ks_flat.reserve(ks.size());
  for (const at::Tensor& k : ks) {
    ks_flat.push_back(match_layout(k, out));
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "rk_combine_cpu", [&] {
    const auto coeffs = rk_coefficients<acc_type<scalar_t>>(weights, h);
    std::vector<const scalar_t*> k_ptrs;
    k_ptrs.reserve(ks_flat.size());
    for (const at::Tensor& k : ks_flat) {
      k_ptrs.push_back(k.const_data_ptr<scalar_t>());
    }
    scalar_t* out_ptr = out.mutable_data_ptr<scalar_t>();
    const scalar_t* y_ptr = y_flat.const_data_ptr<scalar_t>();
    at::parallel_for(0, numel, kGrainSize, [&](int64_t begin, int64_t end) {
      combine_range<scalar_t>(out_ptr, y_ptr, k_ptrs, coeffs, begin, end);
    });
  });
}

at::Tensor rk_combine_cpu(const at::Tensor& y, at::TensorList ks, at::ArrayRef<double> weights,
                          double h) {
  return rk_combine_with(&combine_into, y, ks, weights, h);
}

void rk_combine_out_cpu(const at::Tensor& out, const at::Tensor& y, at::TensorList ks,
                        at::ArrayRef<double> weights, double h) {
  rk_combine_out_with(&combine_into, out, y, ks, weights, h);
}

std::vector<at::Tensor> rk_combine_backward_cpu(const at::Tensor& grad,
                                                at::ArrayRef<double> weights, double h) {
  check_rk_combine_backward_args(grad, weights);
  const at::Tensor g = is_flat_writable(grad) ? grad : grad.contiguous();
  std::vector<at::Tensor> outs;
  outs.reserve(weights.size());
  for (size_t i = 0; i < weights.size(); ++i) {
    outs.push_back(at::empty_like(g));
  }
  const int64_t numel = g.numel();
  if (numel == 0) {
    return outs;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "rk_combine_backward_cpu", [&] {
    const auto coeffs = rk_coefficients<acc_type<scalar_t>>(weights, h);
    std::vector<scalar_t*> out_ptrs;
    out_ptrs.reserve(outs.size());
    for (at::Tensor& o : outs) {
      out_ptrs.push_back(o.mutable_data_ptr<scalar_t>());
    }
    const scalar_t* g_ptr = g.const_data_ptr<scalar_t>();
    at::parallel_for(0, numel, kGrainSize, [&](int64_t begin, int64_t end) {
      scale_range<scalar_t>(out_ptrs, g_ptr, coeffs, begin, end);
    });
  });
  return outs;
}

}  // namespace

TORCH_LIBRARY_IMPL(anode_ext, CPU, m) {
  m.impl("rk_combine", &rk_combine_cpu);
  m.impl("rk_combine_out", &rk_combine_out_cpu);
  m.impl("rk_combine_backward", &rk_combine_backward_cpu);
}

}  // namespace anode_ext
