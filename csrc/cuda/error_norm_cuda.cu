// CUDA kernel of rk_error_norm: a grid-stride loop, each thread adding its elements'
// squares in double, a block reduction in shared memory and one atomic add per block,
// on the current stream.

#include "../error_norm.h"
#include "../rk_combine.h"
#include "operand_array.cuh"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

namespace anode_ext {
namespace {

// Longer error sums than kMaxOperands ks are added by several launches into the same total.
constexpr int kThreads = 256;

template <typename scalar_t>
__global__ void error_norm_kernel(const scalar_t* y, const scalar_t* y1, OperandArray<const scalar_t*> ks,
                                  OperandArray<at::opmath_type<scalar_t>> coeffs, int num_ks,
                                  at::opmath_type<scalar_t> rtol, at::opmath_type<scalar_t> atol,
                                  int64_t numel, double* total) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ double partial[kThreads];
  double sum = 0.0;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < numel; i += stride) {
    acc_t err = acc_t(0);
#pragma unroll
    for (int j = 0; j < kMaxOperands; ++j) {
      if (j < num_ks) {
        err = rk_accumulate(err, coeffs.items[j], static_cast<acc_t>(ks.items[j][i]));
      }
    }
    const double e = static_cast<double>(scaled_error(err, static_cast<acc_t>(y[i]), static_cast<acc_t>(y1[i]),
                                                      rtol, atol));
    sum += e * e;
  }
  partial[threadIdx.x] = sum;
  __syncthreads();
  for (int half = kThreads / 2; half > 0; half /= 2) {
    if (threadIdx.x < half) {
      partial[threadIdx.x] += partial[threadIdx.x + half];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    atomicAdd(total, partial[0]);
  }
}

at::Tensor rk_error_norm_cuda(const at::Tensor& y, const at::Tensor& y1, at::TensorList ks,
                              at::ArrayRef<double> weights, double h, double rtol, double atol) {
  check_rk_error_norm_args(y, y1, ks, weights, rtol, atol);
  const c10::cuda::CUDAGuard guard(y.device());
  const at::Tensor like = y.is_non_overlapping_and_dense() ? y : y.contiguous();
  const at::Tensor y1_flat = match_layout(y1, like);
  std::vector<at::Tensor> ks_flat;
  for (const at::Tensor& k : ks) {
    ks_flat.push_back(match_layout(k, like));
  }
  at::Tensor total = at::zeros({}, y.options().dtype(at::kDouble));
  const int64_t numel = like.numel();
  if (numel == 0) {
    return total;
  }
  const int blocks = static_cast<int>(std::min<int64_t>((numel + kThreads - 1) / kThreads,
      static_cast<int64_t>(at::cuda::getCurrentDeviceProperties()->multiProcessorCount) * 8));
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "rk_error_norm_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto coeffs = rk_coefficients<acc_t>(weights, h);
    const size_t n = ks_flat.size();
    TORCH_CHECK(n <= static_cast<size_t>(kMaxOperands), "rk_error_norm: got ", n,
                " error terms; expected at most ", kMaxOperands);
    OperandArray<const scalar_t*> k_arr{};
    OperandArray<acc_t> c_arr{};
    for (size_t j = 0; j < n; ++j) {
      k_arr.items[j] = ks_flat[j].const_data_ptr<scalar_t>();
      c_arr.items[j] = coeffs[j];
    }
    error_norm_kernel<scalar_t><<<blocks, kThreads, 0, stream>>>(
        like.const_data_ptr<scalar_t>(), y1_flat.const_data_ptr<scalar_t>(), k_arr, c_arr, static_cast<int>(n),
        static_cast<acc_t>(rtol), static_cast<acc_t>(atol), numel, total.mutable_data_ptr<double>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return total;
}

}  // namespace

TORCH_LIBRARY_IMPL(anode_ext, CUDA, m) {
  m.impl("rk_error_norm", &rk_error_norm_cuda);
}

}  // namespace anode_ext
