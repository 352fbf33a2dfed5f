// CUDA kernels of the RDA ops. A filter slice couples only its own taps, so one
// thread owns one slice and keeps it, and a whole RK step of it, in per-thread
// arrays sized by the taps and stages buckets (rda.h). For the filter shapes the
// models use, the shape is a compile-time constant (dispatch_shape) and the
// arrays live in registers; for the others their indices are known at run time
// only and the arrays live in local memory (a stack frame of a few KB for 7x7).
// Coefficient gradients are reduced per output channel by one block each, in a
// fixed order (deterministic).
//
// Slices are runs of `taps` consecutive elements, so threads that read and wrote
// their own slices in global memory would touch words `taps` apart: each access
// of a warp would span `taps` times the bytes it uses. Instead a block moves the
// tile of slices its threads own between global and shared memory with
// consecutive threads on consecutive elements (coalesced), and each thread reads
// and writes only its own slice of the tile. Values pass through the tile in the
// tensor's dtype, so the arithmetic and its bits are those of direct loads.

#include "../rda.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

namespace anode_ext {
namespace {

constexpr int kChannelThreads = 64;

// Threads of a slice-parallel block: fewer for 7x7 slices, so that a tile of
// float64 slices stays within the 48 KB of static shared memory.
template <int TAPS>
constexpr int slice_threads() {
  return TAPS > 25 ? 64 : 128;
}

// Calls fn(RdaBucket<TAPS>{}, RdaBucket<KH>{}, RdaBucket<KW>{}): the smallest taps
// bucket holding an H x W slice and, for the filter shapes the models use (1x1;
// 3x3, 1x3, 3x1), that shape as constants, so that the stencil's indices are
// constants and a thread's arrays stay in registers; KH = KW = 0 (the shape known
// at run time, arrays in local memory) for the others. H * W >= 1.
template <typename Fn>
void dispatch_shape(int H, int W, Fn&& fn) {
  dispatch_taps(H * W, [&](auto taps_bucket) {
    constexpr int TAPS = decltype(taps_bucket)::value;
    if constexpr (TAPS == 1) {
      fn(taps_bucket, RdaBucket<1>{}, RdaBucket<1>{});
    } else if constexpr (TAPS == 9) {
      if (H == 3 && W == 3) {
        fn(taps_bucket, RdaBucket<3>{}, RdaBucket<3>{});
      } else if (H == 1 && W == 3) {
        fn(taps_bucket, RdaBucket<1>{}, RdaBucket<3>{});
      } else if (H == 3 && W == 1) {
        fn(taps_bucket, RdaBucket<3>{}, RdaBucket<1>{});
      } else {
        fn(taps_bucket, RdaBucket<0>{}, RdaBucket<0>{});
      }
    } else {
      fn(taps_bucket, RdaBucket<0>{}, RdaBucket<0>{});
    }
  });
}

// The taps of a tile's slice: KH * KW when the shape is fixed, else the bucket's.
template <int TAPS, int KH, int KW>
constexpr int tile_taps() {
  return KH > 0 ? KH * KW : TAPS;
}

template <typename T>
struct StageArray {
  T items[kRdaMaxStages];
};

// A block's tile: THREADS slices of at most TAPS taps, in the tensor's dtype. Raw
// bytes, because a __shared__ variable of a class type (c10::Half) may not have
// a constructor to run.
template <typename scalar_t, int THREADS, int TAPS>
__device__ __forceinline__ scalar_t* block_tile() {
  __shared__ __align__(16) unsigned char bytes[sizeof(scalar_t) * THREADS * TAPS];
  return reinterpret_cast<scalar_t*>(bytes);
}

// Copies `count` elements, thread k taking elements k, k + blockDim.x, ...:
// consecutive threads on consecutive elements, in global and in shared memory.
template <typename scalar_t>
__device__ __forceinline__ void copy_coalesced(scalar_t* dst, const scalar_t* src, int64_t count) {
  for (int64_t i = threadIdx.x; i < count; i += blockDim.x) {
    dst[i] = src[i];
  }
}

template <typename scalar_t, typename acc_t>
__device__ __forceinline__ RdaCoefficients<acc_t> coefficients_at(const scalar_t* c, int64_t cout,
                                                                  int64_t channel) {
  return {static_cast<acc_t>(c[channel]), static_cast<acc_t>(c[cout + channel]),
          static_cast<acc_t>(c[2 * cout + channel]), static_cast<acc_t>(c[3 * cout + channel])};
}

template <typename scalar_t, typename acc_t>
__device__ __forceinline__ void load(acc_t* dst, const scalar_t* src, int taps) {
  RDA_UNROLL
  for (int e = 0; e < taps; ++e) {
    dst[e] = static_cast<acc_t>(src[e]);
  }
}

template <typename scalar_t, typename acc_t>
__device__ __forceinline__ void store(scalar_t* dst, const acc_t* src, int taps) {
  RDA_UNROLL
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

// A tile of slices: its first slice (within the range being tiled), the offset
// and number of its elements in the tensor, and whether this thread owns one of
// its slices. All but `active` are the same for every thread of a block, so that
// the loops over tiles keep the block's threads together at each __syncthreads.
struct Tile {
  int64_t first;
  int64_t offset;
  int64_t count;
  bool active;
};

// Tile k of the `slices` slices that start at slice `base`, THREADS a tile.
template <int THREADS>
__device__ __forceinline__ Tile tile_at(int64_t k, int64_t slices, int64_t base, int taps) {
  const int64_t first = k * THREADS;
  const int64_t left = slices - first;
  const int count = static_cast<int>(left < THREADS ? left : THREADS);
  return {first, (base + first) * taps, static_cast<int64_t>(count) * taps, static_cast<int>(threadIdx.x) < count};
}

// The loop of a forward kernel: body(tile) for each tile of THREADS of the tensor's
// `slices` slices, the grid's blocks taking tiles in turn.
template <int THREADS, typename Body>
__device__ __forceinline__ void for_each_tile(int64_t slices, int taps, Body&& body) {
  const int64_t tiles = (slices + THREADS - 1) / THREADS;
  for (int64_t k = blockIdx.x; k < tiles; k += gridDim.x) {
    body(tile_at<THREADS>(k, slices, 0, taps));
  }
}

// The loops of a backward kernel: one block per output channel, the grid's blocks
// taking channels in turn; body(tile, coefficients, sums) for each tile of the
// channel's Cin slices, adding its coefficient gradients to sums[0..3], which are
// then summed over the block (in a fixed order) and written.
template <typename scalar_t, typename Body>
__device__ __forceinline__ void for_each_channel_tile(const scalar_t* coeffs, scalar_t* grad_coeffs, int64_t cout,
                                                      int64_t cin, int taps, Body&& body) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t tiles = (cin + kChannelThreads - 1) / kChannelThreads;
  for (int64_t channel = blockIdx.x; channel < cout; channel += gridDim.x) {
    const auto k = coefficients_at<scalar_t, acc_t>(coeffs, cout, channel);
    acc_t sums[4] = {0, 0, 0, 0};
    for (int64_t j = 0; j < tiles; ++j) {
      body(tile_at<kChannelThreads>(j, cin, channel * cin, taps), k, sums);
    }
    block_sum4(sums);
    if (threadIdx.x == 0) {
      for (int row = 0; row < 4; ++row) {
        grad_coeffs[row * cout + channel] = static_cast<scalar_t>(sums[row]);
      }
    }
  }
}

template <typename scalar_t, int TAPS, int KH, int KW>
__global__ void rda_rhs_kernel(const scalar_t* __restrict__ theta, const scalar_t* __restrict__ coeffs,
                               scalar_t* __restrict__ out, int64_t cout, int64_t cin, int h, int w,
                               int64_t reaction) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int kThreads = slice_threads<TAPS>();
  scalar_t* tile = block_tile<scalar_t, kThreads, tile_taps<TAPS, KH, KW>()>();
  const int H = KH > 0 ? KH : h;
  const int W = KW > 0 ? KW : w;
  const int taps = H * W;
  for_each_tile<kThreads>(cout * cin, taps, [&](const Tile& t) {
    copy_coalesced(tile, theta + t.offset, t.count);
    __syncthreads();
    if (t.active) {
      scalar_t* own = tile + threadIdx.x * taps;
      acc_t slice[TAPS];
      acc_t q[TAPS];
      load(slice, own, taps);
      rda_slice(slice, q, H, W, coefficients_at<scalar_t, acc_t>(coeffs, cout, (t.first + threadIdx.x) / cin),
                reaction);
      store(own, q, taps);
    }
    __syncthreads();
    copy_coalesced(out + t.offset, tile, t.count);
    __syncthreads();
  });
}

template <typename scalar_t, int TAPS, int KH, int KW>
__global__ void rda_rhs_backward_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ theta,
                                        const scalar_t* __restrict__ coeffs, scalar_t* __restrict__ grad_theta,
                                        scalar_t* __restrict__ grad_coeffs, int64_t cout, int64_t cin, int h,
                                        int w, int64_t reaction) {
  using acc_t = at::opmath_type<scalar_t>;
  scalar_t* tile = block_tile<scalar_t, kChannelThreads, tile_taps<TAPS, KH, KW>()>();
  const int H = KH > 0 ? KH : h;
  const int W = KW > 0 ? KW : w;
  const int taps = H * W;
  for_each_channel_tile(coeffs, grad_coeffs, cout, cin, taps, [&](const Tile& t, const auto& k, acc_t* sums) {
    scalar_t* own = tile + threadIdx.x * taps;
    acc_t slice[TAPS];
    acc_t q_bar[TAPS];
    acc_t slice_bar[TAPS];
    copy_coalesced(tile, theta + t.offset, t.count);
    __syncthreads();
    if (t.active) {
      load(slice, own, taps);
    }
    __syncthreads();
    copy_coalesced(tile, grad + t.offset, t.count);
    __syncthreads();
    if (t.active) {
      load(q_bar, own, taps);
      RDA_UNROLL
      for (int e = 0; e < taps; ++e) {
        slice_bar[e] = acc_t(0);
      }
      rda_slice_backward(slice, q_bar, slice_bar, sums, H, W, k, reaction);
      store(own, slice_bar, taps);
    }
    __syncthreads();
    copy_coalesced(grad_theta + t.offset, tile, t.count);
    __syncthreads();
  });
}

// Every thread of the block runs the step, also one past the last slice (on the
// tile's first slice, storing nothing): each output is written through the tile
// as soon as it is formed, with the whole block at the __syncthreads around it.
template <typename scalar_t, int TAPS, int KH, int KW, int STAGES>
__global__ void rda_rk_step_kernel(const scalar_t* __restrict__ theta, const scalar_t* __restrict__ coeffs,
                                   StageArray<scalar_t*> outs, int64_t cout, int64_t cin, int h, int w,
                                   int64_t reaction, RdaTableau<at::opmath_type<scalar_t>> tab) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int kThreads = slice_threads<TAPS>();
  scalar_t* tile = block_tile<scalar_t, kThreads, tile_taps<TAPS, KH, KW>()>();
  const int H = KH > 0 ? KH : h;
  const int W = KW > 0 ? KW : w;
  const int taps = H * W;
  for_each_tile<kThreads>(cout * cin, taps, [&](const Tile& t) {
    const int mine = t.active ? static_cast<int>(threadIdx.x) : 0;
    copy_coalesced(tile, theta + t.offset, t.count);
    __syncthreads();
    acc_t slice[TAPS];
    acc_t q[STAGES][TAPS];
    load(slice, tile + mine * taps, taps);
    rda_rk_slice<TAPS, scalar_t>(slice, q, H, W, coefficients_at<scalar_t, acc_t>(coeffs, cout, (t.first + mine) / cin),
                                 reaction, tab, [&](int i, const acc_t* x) {
                                   __syncthreads();
                                   if (t.active) {
                                     store(tile + mine * taps, x, taps);
                                   }
                                   __syncthreads();
                                   copy_coalesced(outs.items[i - 1] + t.offset, tile, t.count);
                                 });
    __syncthreads();
  });
}

template <typename scalar_t, int TAPS, int KH, int KW, int STAGES>
__global__ void rda_rk_step_backward_kernel(StageArray<const scalar_t*> grads, const scalar_t* __restrict__ theta,
                                            const scalar_t* __restrict__ coeffs, scalar_t* __restrict__ grad_theta,
                                            scalar_t* __restrict__ grad_coeffs, int64_t cout, int64_t cin, int h,
                                            int w, int64_t reaction, RdaTableau<at::opmath_type<scalar_t>> tab) {
  using acc_t = at::opmath_type<scalar_t>;
  scalar_t* tile = block_tile<scalar_t, kChannelThreads, tile_taps<TAPS, KH, KW>()>();
  const int H = KH > 0 ? KH : h;
  const int W = KW > 0 ? KW : w;
  const int taps = H * W;
  const int stages = tab.stages;
  for_each_channel_tile(coeffs, grad_coeffs, cout, cin, taps, [&](const Tile& t, const auto& k, acc_t* sums) {
    scalar_t* own = tile + threadIdx.x * taps;
    acc_t slice[TAPS];
    // The gradients of the outputs in their dtype, as read: the stage inputs'
    // in `inner`, the new weight's in `last`. Indexed by constants once the
    // stage loops unroll (the last stage's number is known at run time only).
    scalar_t inner[STAGES][TAPS];
    scalar_t last[TAPS];
    copy_coalesced(tile, theta + t.offset, t.count);
    __syncthreads();
    if (t.active) {
      load(slice, own, taps);
    }
    RDA_UNROLL
    for (int i = 0; i < STAGES; ++i) {
      if (i >= stages) {
        break;
      }
      __syncthreads();
      copy_coalesced(tile, grads.items[i] + t.offset, t.count);
      __syncthreads();
      if (t.active) {
        RDA_UNROLL
        for (int e = 0; e < taps; ++e) {
          if (i == stages - 1) {
            last[e] = own[e];
          } else {
            inner[i][e] = own[e];
          }
        }
      }
    }
    if (t.active) {
      acc_t q[STAGES][TAPS];
      acc_t q_bar[STAGES][TAPS];
      acc_t slice_bar[TAPS];
      const auto grad = [&](int i, int e) {
        return static_cast<acc_t>(i == stages ? last[e] : inner[i - 1][e]);
      };
      // rho is evaluated again in the second sweep rather than kept: the
      // thread's arrays stay those of q and q_bar.
      rda_rk_slice_backward<TAPS, scalar_t>(slice, grad, q, q_bar, static_cast<acc_t(*)[TAPS]>(nullptr), slice_bar,
                                            sums, H, W, k, reaction, tab);
      store(own, slice_bar, taps);
    }
    __syncthreads();
    copy_coalesced(grad_theta + t.offset, tile, t.count);
    __syncthreads();
  });
}

int64_t slice_blocks(int64_t slices, int threads) {
  const int64_t wanted = (slices + threads - 1) / threads;
  const int64_t resident =
      static_cast<int64_t>(at::cuda::getCurrentDeviceProperties()->multiProcessorCount) * 4;
  return std::max<int64_t>(1, std::min(wanted, resident));
}

int64_t channel_blocks(int64_t cout) {
  const int64_t resident =
      static_cast<int64_t>(at::cuda::getCurrentDeviceProperties()->multiProcessorCount) * 8;
  return std::max<int64_t>(1, std::min(cout, resident));
}

// The stage count's bucket, then the shape's: fn(taps, kh, kw, stages buckets).
template <typename Fn>
void dispatch_shape_and_stages(int H, int W, int stages, Fn&& fn) {
  dispatch_shape(H, W, [&](auto taps_bucket, auto kh, auto kw) {
    if (stages <= 4) {
      fn(taps_bucket, kh, kw, RdaBucket<4>{});
    } else {
      fn(taps_bucket, kh, kw, RdaBucket<kRdaMaxStages>{});
    }
  });
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
    dispatch_shape(g.H, g.W, [&](auto taps_bucket, auto kh, auto kw) {
      constexpr int TAPS = decltype(taps_bucket)::value;
      constexpr int kThreads = slice_threads<TAPS>();
      rda_rhs_kernel<scalar_t, TAPS, decltype(kh)::value, decltype(kw)::value>
          <<<slice_blocks(g.cout * g.cin, kThreads), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
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
  check_rda_grads("rda_rhs_backward", grad, 1, theta);
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
    dispatch_shape(g.H, g.W, [&](auto taps_bucket, auto kh, auto kw) {
      constexpr int TAPS = decltype(taps_bucket)::value;
      rda_rhs_backward_kernel<scalar_t, TAPS, decltype(kh)::value, decltype(kw)::value>
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
  check_rda_tableau("rda_rk_step", a, b, h);
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
    dispatch_shape_and_stages(g.H, g.W, stages, [&](auto taps_bucket, auto kh, auto kw, auto stages_bucket) {
      constexpr int TAPS = decltype(taps_bucket)::value;
      constexpr int kThreads = slice_threads<TAPS>();
      rda_rk_step_kernel<scalar_t, TAPS, decltype(kh)::value, decltype(kw)::value, decltype(stages_bucket)::value>
          <<<slice_blocks(g.cout * g.cin, kThreads), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
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
  check_rda_tableau("rda_rk_step_backward", a, b, h);
  check_rda_grads("rda_rk_step_backward", grads, b.size(), theta);
  const int stages = static_cast<int>(b.size());
  const c10::cuda::CUDAGuard guard(theta.device());
  const at::Tensor th = theta.contiguous();
  const at::Tensor co = coefficients.contiguous();
  std::vector<at::Tensor> gr;
  for (const at::Tensor& t : grads) {
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
    dispatch_shape_and_stages(g.H, g.W, stages, [&](auto taps_bucket, auto kh, auto kw, auto stages_bucket) {
      constexpr int TAPS = decltype(taps_bucket)::value;
      rda_rk_step_backward_kernel<scalar_t, TAPS, decltype(kh)::value, decltype(kw)::value,
                                  decltype(stages_bucket)::value>
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
