// CUDA kernels of the RDA ops. A filter slice couples only its own taps, so one
// thread owns one slice and keeps it, and a whole RK step of it, in per-thread
// arrays sized by the taps and stages buckets (rda.h): small slices stay in
// registers, 7x7 ones spill to a stack frame of a few KB. Coefficient gradients
// are reduced per output channel by one block each, in a fixed order
// (deterministic).

#include "../rda.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

namespace anode_ext {
namespace {

constexpr int kSliceThreads = 128;
constexpr int kChannelThreads = 64;

template <typename T>
struct StageArray {
  T items[kRdaMaxStages];
};

template <typename scalar_t, typename acc_t>
__device__ __forceinline__ RdaCoefficients<acc_t> coefficients_at(const scalar_t* c, int64_t cout,
                                                                  int64_t channel) {
  return {static_cast<acc_t>(c[channel]), static_cast<acc_t>(c[cout + channel]),
          static_cast<acc_t>(c[2 * cout + channel]), static_cast<acc_t>(c[3 * cout + channel])};
}

template <typename scalar_t, typename acc_t>
__device__ __forceinline__ void load(acc_t* dst, const scalar_t* src, int taps) {
  for (int e = 0; e < taps; ++e) {
    dst[e] = static_cast<acc_t>(src[e]);
  }
}

template <typename scalar_t, typename acc_t>
__device__ __forceinline__ void store(scalar_t* dst, const acc_t* src, int taps) {
  for (int e = 0; e < taps; ++e) {
    dst[e] = static_cast<scalar_t>(src[e]);
  }
}

// Sums each of the block's four per-thread values; thread 0 gets the totals.
template <typename acc_t>
__device__ void block_sum4(acc_t* sums) {
  __shared__ acc_t partial[4][kChannelThreads];
  for (int row = 0; row < 4; ++row) {
    partial[row][threadIdx.x] = sums[row];
  }
  __syncthreads();
  for (int width = kChannelThreads / 2; width > 0; width /= 2) {
    if (threadIdx.x < width) {
      for (int row = 0; row < 4; ++row) {
        partial[row][threadIdx.x] += partial[row][threadIdx.x + width];
      }
    }
    __syncthreads();
  }
  for (int row = 0; row < 4; ++row) {
    sums[row] = partial[row][0];
  }
  __syncthreads();
}

template <typename scalar_t, int TAPS>
__global__ void rda_rhs_kernel(const scalar_t* __restrict__ theta, const scalar_t* __restrict__ coeffs,
                               scalar_t* __restrict__ out, int64_t cout, int64_t cin, int H, int W,
                               int64_t reaction) {
  using acc_t = at::opmath_type<scalar_t>;
  const int taps = H * W;
  const int64_t slices = cout * cin;
  for (int64_t s = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; s < slices;
       s += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    acc_t slice[TAPS];
    acc_t q[TAPS];
    load(slice, theta + s * taps, taps);
    rda_slice(slice, q, H, W, coefficients_at<scalar_t, acc_t>(coeffs, cout, s / cin), reaction);
    store(out + s * taps, q, taps);
  }
}

template <typename scalar_t, int TAPS>
__global__ void rda_rhs_backward_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ theta,
                                        const scalar_t* __restrict__ coeffs, scalar_t* __restrict__ grad_theta,
                                        scalar_t* __restrict__ grad_coeffs, int64_t cout, int64_t cin, int H,
                                        int W, int64_t reaction) {
  using acc_t = at::opmath_type<scalar_t>;
  const int taps = H * W;
  for (int64_t channel = blockIdx.x; channel < cout; channel += gridDim.x) {
    const auto k = coefficients_at<scalar_t, acc_t>(coeffs, cout, channel);
    acc_t sums[4] = {0, 0, 0, 0};
    for (int64_t ci = threadIdx.x; ci < cin; ci += blockDim.x) {
      const int64_t s = channel * cin + ci;
      acc_t slice[TAPS];
      acc_t q_bar[TAPS];
      acc_t slice_bar[TAPS];
      load(slice, theta + s * taps, taps);
      load(q_bar, grad + s * taps, taps);
      for (int e = 0; e < taps; ++e) {
        slice_bar[e] = acc_t(0);
      }
      rda_slice_backward(slice, q_bar, slice_bar, sums, H, W, k, reaction);
      store(grad_theta + s * taps, slice_bar, taps);
    }
    block_sum4(sums);
    if (threadIdx.x == 0) {
      for (int row = 0; row < 4; ++row) {
        grad_coeffs[row * cout + channel] = static_cast<scalar_t>(sums[row]);
      }
    }
  }
}

template <typename scalar_t, int TAPS, int STAGES>
__global__ void rda_rk_step_kernel(const scalar_t* __restrict__ theta, const scalar_t* __restrict__ coeffs,
                                   StageArray<scalar_t*> outs, int64_t cout, int64_t cin, int H, int W,
                                   int64_t reaction, RdaTableau<at::opmath_type<scalar_t>> tab) {
  using acc_t = at::opmath_type<scalar_t>;
  const int taps = H * W;
  const int64_t slices = cout * cin;
  for (int64_t s = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; s < slices;
       s += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    acc_t slice[TAPS];
    acc_t q[STAGES][TAPS];
    load(slice, theta + s * taps, taps);
    rda_rk_slice<TAPS, scalar_t>(slice, q, H, W, coefficients_at<scalar_t, acc_t>(coeffs, cout, s / cin), reaction,
                                 tab, [&](int i, const acc_t* x) { store(outs.items[i - 1] + s * taps, x, taps); });
  }
}

template <typename scalar_t, int TAPS, int STAGES>
__global__ void rda_rk_step_backward_kernel(StageArray<const scalar_t*> grads, const scalar_t* __restrict__ theta,
                                            const scalar_t* __restrict__ coeffs, scalar_t* __restrict__ grad_theta,
                                            scalar_t* __restrict__ grad_coeffs, int64_t cout, int64_t cin, int H,
                                            int W, int64_t reaction, RdaTableau<at::opmath_type<scalar_t>> tab) {
  using acc_t = at::opmath_type<scalar_t>;
  const int taps = H * W;
  for (int64_t channel = blockIdx.x; channel < cout; channel += gridDim.x) {
    const auto k = coefficients_at<scalar_t, acc_t>(coeffs, cout, channel);
    acc_t sums[4] = {0, 0, 0, 0};
    for (int64_t ci = threadIdx.x; ci < cin; ci += blockDim.x) {
      const int64_t s = channel * cin + ci;
      acc_t slice[TAPS];
      acc_t q[STAGES][TAPS];
      acc_t q_bar[STAGES][TAPS];
      acc_t slice_bar[TAPS];
      load(slice, theta + s * taps, taps);
      const auto grad = [&](int i, int e) { return static_cast<acc_t>(grads.items[i - 1][s * taps + e]); };
      // rho is evaluated again in the second sweep rather than kept: the
      // thread's arrays stay those of q and q_bar.
      rda_rk_slice_backward<TAPS, scalar_t>(slice, grad, q, q_bar, static_cast<acc_t(*)[TAPS]>(nullptr), slice_bar,
                                            sums, H, W, k, reaction, tab);
      store(grad_theta + s * taps, slice_bar, taps);
    }
    block_sum4(sums);
    if (threadIdx.x == 0) {
      for (int row = 0; row < 4; ++row) {
        grad_coeffs[row * cout + channel] = static_cast<scalar_t>(sums[row]);
      }
    }
  }
}

int64_t slice_blocks(int64_t slices) {
  const int64_t wanted = (slices + kSliceThreads - 1) / kSliceThreads;
  const int64_t resident =
      static_cast<int64_t>(at::cuda::getCurrentDeviceProperties()->multiProcessorCount) * 4;
  return std::max<int64_t>(1, std::min(wanted, resident));
}

int64_t channel_blocks(int64_t cout) {
  const int64_t resident =
      static_cast<int64_t>(at::cuda::getCurrentDeviceProperties()->multiProcessorCount) * 8;
  return std::max<int64_t>(1, std::min(cout, resident));
}

at::Tensor rda_rhs_cuda(const at::Tensor& theta, const at::Tensor& coefficients, int64_t reaction) {
  const RdaGeometry g = check_rda_args("rda_rhs", theta, coefficients, reaction);
  const c10::cuda::CUDAGuard guard(theta.device());
  const at::Tensor th = theta.contiguous();
  const at::Tensor co = coefficients.contiguous();
  at::Tensor out = at::empty_like(th);
  if (th.numel() == 0) {
    return out;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, th.scalar_type(), "rda_rhs_cuda", [&] {
    dispatch_taps(g.H * g.W, [&](auto taps_bucket) {
      constexpr int TAPS = decltype(taps_bucket)::value;
      rda_rhs_kernel<scalar_t, TAPS>
          <<<slice_blocks(g.cout * g.cin), kSliceThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
              th.const_data_ptr<scalar_t>(), co.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), g.cout,
              g.cin, g.H, g.W, reaction);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> rda_rhs_backward_cuda(const at::Tensor& grad, const at::Tensor& theta,
                                                         const at::Tensor& coefficients, int64_t reaction) {
  const RdaGeometry g = check_rda_args("rda_rhs_backward", theta, coefficients, reaction);
  check_rda_grad("rda_rhs_backward", grad, theta);
  const c10::cuda::CUDAGuard guard(theta.device());
  const at::Tensor th = theta.contiguous();
  const at::Tensor gr = grad.contiguous();
  const at::Tensor co = coefficients.contiguous();
  at::Tensor grad_theta = at::empty_like(th);
  at::Tensor grad_coefficients = at::zeros_like(co);
  if (th.numel() == 0) {
    return {grad_theta, grad_coefficients};
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, th.scalar_type(), "rda_rhs_backward_cuda", [&] {
    dispatch_taps(g.H * g.W, [&](auto taps_bucket) {
      constexpr int TAPS = decltype(taps_bucket)::value;
      rda_rhs_backward_kernel<scalar_t, TAPS>
          <<<channel_blocks(g.cout), kChannelThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
              gr.const_data_ptr<scalar_t>(), th.const_data_ptr<scalar_t>(), co.const_data_ptr<scalar_t>(),
              grad_theta.mutable_data_ptr<scalar_t>(), grad_coefficients.mutable_data_ptr<scalar_t>(), g.cout, g.cin,
              g.H, g.W, reaction);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {grad_theta, grad_coefficients};
}

std::vector<at::Tensor> rda_rk_step_cuda(const at::Tensor& theta, const at::Tensor& coefficients, int64_t reaction,
                                         at::ArrayRef<double> a, at::ArrayRef<double> b, double h) {
  const RdaGeometry g = check_rda_args("rda_rk_step", theta, coefficients, reaction);
  check_rda_tableau(a, b);
  const c10::cuda::CUDAGuard guard(theta.device());
  const at::Tensor th = theta.contiguous();
  const at::Tensor co = coefficients.contiguous();
  const int stages = static_cast<int>(b.size());
  std::vector<at::Tensor> outs;
  for (int i = 0; i < stages; ++i) {
    outs.push_back(at::empty_like(th));
  }
  if (th.numel() == 0) {
    return outs;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, th.scalar_type(), "rda_rk_step_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto tab = make_rda_tableau<acc_t>(a, b, h);
    StageArray<scalar_t*> out_ptrs{};
    for (int i = 0; i < stages; ++i) {
      out_ptrs.items[i] = outs[i].mutable_data_ptr<scalar_t>();
    }
    dispatch_taps_and_stages(g.H * g.W, stages, [&](auto taps_bucket, auto stages_bucket) {
      constexpr int TAPS = decltype(taps_bucket)::value;
      constexpr int STAGES = decltype(stages_bucket)::value;
      rda_rk_step_kernel<scalar_t, TAPS, STAGES>
          <<<slice_blocks(g.cout * g.cin), kSliceThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
              th.const_data_ptr<scalar_t>(), co.const_data_ptr<scalar_t>(), out_ptrs, g.cout, g.cin, g.H, g.W,
              reaction, tab);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return outs;
}

std::tuple<at::Tensor, at::Tensor> rda_rk_step_backward_cuda(at::TensorList grads, const at::Tensor& theta,
                                                             const at::Tensor& coefficients, int64_t reaction,
                                                             at::ArrayRef<double> a, at::ArrayRef<double> b,
                                                             double h) {
  const RdaGeometry g = check_rda_args("rda_rk_step_backward", theta, coefficients, reaction);
  check_rda_tableau(a, b);
  const int stages = static_cast<int>(b.size());
  TORCH_CHECK(static_cast<int>(grads.size()) == stages, "rda_rk_step_backward: got ", grads.size(),
              " gradients for ", stages, " outputs");
  const c10::cuda::CUDAGuard guard(theta.device());
  const at::Tensor th = theta.contiguous();
  const at::Tensor co = coefficients.contiguous();
  std::vector<at::Tensor> gr;
  for (const at::Tensor& t : grads) {
    check_rda_grad("rda_rk_step_backward", t, theta);
    gr.push_back(t.contiguous());
  }
  at::Tensor grad_theta = at::empty_like(th);
  at::Tensor grad_coefficients = at::zeros_like(co);
  if (th.numel() == 0) {
    return {grad_theta, grad_coefficients};
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, th.scalar_type(), "rda_rk_step_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto tab = make_rda_tableau<acc_t>(a, b, h);
    StageArray<const scalar_t*> grad_ptrs{};
    for (int i = 0; i < stages; ++i) {
      grad_ptrs.items[i] = gr[i].const_data_ptr<scalar_t>();
    }
    dispatch_taps_and_stages(g.H * g.W, stages, [&](auto taps_bucket, auto stages_bucket) {
      constexpr int TAPS = decltype(taps_bucket)::value;
      constexpr int STAGES = decltype(stages_bucket)::value;
      rda_rk_step_backward_kernel<scalar_t, TAPS, STAGES>
          <<<channel_blocks(g.cout), kChannelThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
              grad_ptrs, th.const_data_ptr<scalar_t>(), co.const_data_ptr<scalar_t>(),
              grad_theta.mutable_data_ptr<scalar_t>(), grad_coefficients.mutable_data_ptr<scalar_t>(), g.cout, g.cin,
              g.H, g.W, reaction, tab);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {grad_theta, grad_coefficients};
}

}  // namespace

TORCH_LIBRARY_IMPL(anode_ext, CUDA, m) {
  m.impl("rda_rhs", &rda_rhs_cuda);
  m.impl("rda_rhs_backward", &rda_rhs_backward_cuda);
  m.impl("rda_rk_step", &rda_rk_step_cuda);
  m.impl("rda_rk_step_backward", &rda_rk_step_backward_cuda);
}

}  // namespace anode_ext
