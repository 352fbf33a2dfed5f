// CUDA kernels of rk_combine and its backward: a grid-stride loop with 16-byte
// vector loads when every operand is aligned for them, launched on the current
// stream. Half types are widened to float for the arithmetic.

#include "../rk_combine.h"
#include "operand_array.cuh"
#include "vector_access.cuh"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

namespace anode_ext {
namespace {

// dst = src + sum_j coeffs[j] * ks[j] for the (at most kMaxOperands) ks of one
// group. src and dst are scalar_t or its accumulation type: a sum over more ks
// runs as several groups whose partial sums stay in an accumulation-type scratch
// buffer, so it rounds exactly as the CPU's single pass does. dst may be src or
// one of the ks (each element is read before the same thread writes it), so no
// pointer is declared __restrict__.
template <typename scalar_t, typename src_t, typename dst_t, int kVec>
__global__ void rk_combine_kernel(dst_t* out, const src_t* y, OperandArray<const scalar_t*> ks,
                                  OperandArray<at::opmath_type<scalar_t>> coeffs, int num_ks,
                                  int64_t numel) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t num_vecs = numel / kVec;
  for (int64_t v = first; v < num_vecs; v += stride) {
    acc_t acc[kVec];
    load_widened<kVec>(acc, y, v);
#pragma unroll
    for (int j = 0; j < kMaxOperands; ++j) {
      if (j < num_ks) {
        acc_t k[kVec];
        load_widened<kVec>(k, ks.items[j], v);
#pragma unroll
        for (int e = 0; e < kVec; ++e) {
          acc[e] = rk_accumulate(acc[e], coeffs.items[j], k[e]);
        }
      }
    }
    store_narrowed<kVec>(out, v, acc);
  }
  for (int64_t i = num_vecs * kVec + first; i < numel; i += stride) {
    acc_t acc = static_cast<acc_t>(y[i]);
#pragma unroll
    for (int j = 0; j < kMaxOperands; ++j) {
      if (j < num_ks) {
        acc = rk_accumulate(acc, coeffs.items[j], static_cast<acc_t>(ks.items[j][i]));
      }
    }
    out[i] = static_cast<dst_t>(acc);
  }
}

// outs[j] = coeffs[j] * grad. The outputs are fresh tensors, distinct from grad.
template <typename scalar_t, int kVec>
__global__ void rk_scale_kernel(OperandArray<scalar_t*> outs, const scalar_t* __restrict__ grad,
                                OperandArray<at::opmath_type<scalar_t>> coeffs, int num_outs,
                                int64_t numel) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t num_vecs = numel / kVec;
  for (int64_t v = first; v < num_vecs; v += stride) {
    acc_t g[kVec];
    load_widened<kVec>(g, grad, v);
#pragma unroll
    for (int j = 0; j < kMaxOperands; ++j) {
      if (j < num_outs) {
        acc_t scaled[kVec];
#pragma unroll
        for (int e = 0; e < kVec; ++e) {
          scaled[e] = rk_scale(coeffs.items[j], g[e]);
        }
        store_narrowed<kVec>(outs.items[j], v, scaled);
      }
    }
  }
  for (int64_t i = num_vecs * kVec + first; i < numel; i += stride) {
    const acc_t g = static_cast<acc_t>(grad[i]);
#pragma unroll
    for (int j = 0; j < kMaxOperands; ++j) {
      if (j < num_outs) {
        outs.items[j][i] = static_cast<scalar_t>(rk_scale(coeffs.items[j], g));
      }
    }
  }
}

// Enough blocks to fill every SM a few times over; the grid-stride loop covers the rest.
int64_t grid_size(int64_t work_items, int threads) {
  const int64_t wanted = (work_items + threads - 1) / threads;
  const int64_t resident = static_cast<int64_t>(
      at::cuda::getCurrentDeviceProperties()->multiProcessorCount) * 8;
  return std::max<int64_t>(1, std::min(wanted, resident));
}

constexpr int kThreads = 256;

// One launch over the ks [first, first + count): dst = src + sum of their terms.
template <typename scalar_t, typename src_t, typename dst_t>
void launch_group(dst_t* dst, const src_t* src, const std::vector<const scalar_t*>& ks,
                  const std::vector<at::opmath_type<scalar_t>>& coeffs, size_t first, size_t count,
                  int64_t numel) {
  constexpr int kVec = vector_width<scalar_t>();
  OperandArray<const scalar_t*> k_arr{};
  OperandArray<at::opmath_type<scalar_t>> c_arr{};
  bool aligned = is_packed_aligned<kVec>(dst) && is_packed_aligned<kVec>(src);
  for (size_t j = 0; j < count; ++j) {
    k_arr.items[j] = ks[first + j];
    c_arr.items[j] = coeffs[first + j];
    aligned = aligned && is_packed_aligned<kVec>(ks[first + j]);
  }
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  if (aligned) {
    rk_combine_kernel<scalar_t, src_t, dst_t, kVec><<<grid_size(numel / kVec + 1, kThreads), kThreads, 0, stream>>>(
        dst, src, k_arr, c_arr, static_cast<int>(count), numel);
  } else {
    rk_combine_kernel<scalar_t, src_t, dst_t, 1><<<grid_size(numel, kThreads), kThreads, 0, stream>>>(
        dst, src, k_arr, c_arr, static_cast<int>(count), numel);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Writes y + h * sum_i w_i k_i into `out`, which must be dense.
void combine_into(const at::Tensor& out, const at::Tensor& y, at::TensorList ks,
                  at::ArrayRef<double> weights, double h) {
  const int64_t numel = out.numel();
  if (numel == 0) {
    return;
  }
  const c10::cuda::CUDAGuard guard(out.device());
  const at::Tensor y_flat = match_layout(y, out);
  std::vector<at::Tensor> ks_flat;
  ks_flat.reserve(ks.size());
  for (const at::Tensor& k : ks) {
    ks_flat.push_back(match_layout(k, out));
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "rk_combine_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto coeffs = rk_coefficients<acc_t>(weights, h);
    std::vector<const scalar_t*> k_ptrs;
    for (const at::Tensor& k : ks_flat) {
      k_ptrs.push_back(k.const_data_ptr<scalar_t>());
    }
    scalar_t* out_ptr = out.mutable_data_ptr<scalar_t>();
    const scalar_t* y_ptr = y_flat.const_data_ptr<scalar_t>();
    const size_t n = k_ptrs.size();
    if (n <= static_cast<size_t>(kMaxOperands)) {
      launch_group<scalar_t>(out_ptr, y_ptr, k_ptrs, coeffs, 0, n, numel);
      return;
    }
    // More ks than one launch takes: the partial sum lives in a scratch buffer of the
    // accumulation type, never in `out` (which may be one of the later ks) and never
    // rounded to a half type between groups. `out` is written once, by the last group.
    at::Tensor scratch = at::empty({numel}, out.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
    acc_t* partial = scratch.mutable_data_ptr<acc_t>();
    launch_group<scalar_t>(partial, y_ptr, k_ptrs, coeffs, 0, kMaxOperands, numel);
    size_t first = kMaxOperands;
    for (; n - first > static_cast<size_t>(kMaxOperands); first += kMaxOperands) {
      launch_group<scalar_t>(partial, static_cast<const acc_t*>(partial), k_ptrs, coeffs, first, kMaxOperands,
                             numel);
    }
    launch_group<scalar_t>(out_ptr, static_cast<const acc_t*>(partial), k_ptrs, coeffs, first, n - first, numel);
  });
}

at::Tensor rk_combine_cuda(const at::Tensor& y, at::TensorList ks, at::ArrayRef<double> weights,
                          double h) {
  return rk_combine_with(&combine_into, y, ks, weights, h);
}

void rk_combine_out_cuda(const at::Tensor& out, const at::Tensor& y, at::TensorList ks,
                        at::ArrayRef<double> weights, double h) {
  rk_combine_out_with(&combine_into, out, y, ks, weights, h);
}

std::vector<at::Tensor> rk_combine_backward_cuda(const at::Tensor& grad,
                                                 at::ArrayRef<double> weights, double h) {
  check_rk_combine_backward_args(grad, weights);
  const at::Tensor g = is_flat_writable(grad) ? grad : grad.contiguous();
  std::vector<at::Tensor> outs;
  for (size_t i = 0; i < weights.size(); ++i) {
    outs.push_back(at::empty_like(g));
  }
  const int64_t numel = g.numel();
  if (numel == 0) {
    return outs;
  }
  const c10::cuda::CUDAGuard guard(g.device());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "rk_combine_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto coeffs = rk_coefficients<acc_t>(weights, h);
    const scalar_t* g_ptr = g.const_data_ptr<scalar_t>();
    const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
    constexpr int kVec = vector_width<scalar_t>();
    for (size_t first = 0; first < outs.size(); first += kMaxOperands) {
      const size_t count = std::min<size_t>(kMaxOperands, outs.size() - first);
      OperandArray<scalar_t*> o_arr{};
      OperandArray<acc_t> c_arr{};
      bool aligned = is_packed_aligned<kVec>(g_ptr);
      for (size_t j = 0; j < count; ++j) {
        o_arr.items[j] = outs[first + j].mutable_data_ptr<scalar_t>();
        c_arr.items[j] = coeffs[first + j];
        aligned = aligned && is_packed_aligned<kVec>(o_arr.items[j]);
      }
      if (aligned) {
        rk_scale_kernel<scalar_t, kVec><<<grid_size(numel / kVec + 1, kThreads), kThreads, 0, stream>>>(
            o_arr, g_ptr, c_arr, static_cast<int>(count), numel);
      } else {
        rk_scale_kernel<scalar_t, 1><<<grid_size(numel, kThreads), kThreads, 0, stream>>>(
            o_arr, g_ptr, c_arr, static_cast<int>(count), numel);
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return outs;
}

}  // namespace

TORCH_LIBRARY_IMPL(anode_ext, CUDA, m) {
  m.impl("rk_combine", &rk_combine_cuda);
  m.impl("rk_combine_out", &rk_combine_out_cuda);
  m.impl("rk_combine_backward", &rk_combine_backward_cuda);
}

}  // namespace anode_ext
