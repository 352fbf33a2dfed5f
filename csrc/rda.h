#pragma once
// Reaction–diffusion–advection (RDA) dynamics of a convolution weight, the
// ANODEv2 weight ODE dtheta/dt = q(theta):
//
//   q = d * lap(theta) + u * dx(theta) + v * dy(theta) + r * rho(theta)
//
// over the (kh, kw) taps of each filter slice theta[cout, cin, :, :], with
// zero-flux boundaries (a missing neighbour takes the centre's value), central
// differences (x along kw, y along kh, unit spacing) and per-output-channel
// coefficients (d, u, v, r). A slice couples only its own taps, so every
// function below works on one slice held in a small array; the CPU loops and
// the CUDA kernels both call them, so the CPU tests check the GPU arithmetic.

#include <ATen/core/Tensor.h>
#include <c10/macros/Macros.h>

#include <cmath>
#include <type_traits>

#include "rk_combine.h"

// Unrolls a loop completely in CUDA device code when its trip count is a
// compile-time constant (a filter shape the kernel fixes, a stages bucket), so
// that a thread's per-slice arrays are indexed by constants and kept in
// registers rather than in local memory; no effect on a loop whose count is
// known only at run time, nor in host code.
#if defined(__CUDA_ARCH__)
#define RDA_UNROLL _Pragma("unroll")
#else
#define RDA_UNROLL
#endif

namespace anode_ext {

// Largest slice (7x7 taps) and most RK stages the fused kernels take. Kernels are
// instantiated for the smallest bucket of taps (1, 9, 25, 49) and of stages (4, 8)
// that holds the slice and the tableau, so that their per-slice arrays are no
// larger than needed.
constexpr int kRdaMaxTaps = 49;
constexpr int kRdaMaxStages = 8;

template <int N>
using RdaBucket = std::integral_constant<int, N>;

// Calls fn(RdaBucket<TAPS>{}) with the smallest bucket holding `taps`.
template <typename Fn>
inline void dispatch_taps(int taps, Fn&& fn) {
  if (taps <= 1) {
    fn(RdaBucket<1>{});
  } else if (taps <= 9) {
    fn(RdaBucket<9>{});
  } else if (taps <= 25) {
    fn(RdaBucket<25>{});
  } else {
    fn(RdaBucket<kRdaMaxTaps>{});
  }
}

// Calls fn(RdaBucket<TAPS>{}, RdaBucket<STAGES>{}) with the smallest buckets
// holding `taps` and `stages`.
template <typename Fn>
inline void dispatch_taps_and_stages(int taps, int stages, Fn&& fn) {
  dispatch_taps(taps, [&](auto taps_bucket) {
    if (stages <= 4) {
      fn(taps_bucket, RdaBucket<4>{});
    } else {
      fn(taps_bucket, RdaBucket<kRdaMaxStages>{});
    }
  });
}

enum RdaReaction : int64_t { kReactionTanh = 0, kReactionRelu = 1, kReactionNone = 2 };

// Every function below is written for a value type V that is either one
// accumulator (acc_t: a CUDA thread's slice) or a pack of lanes, one slice per
// lane (the CPU kernels' RdaLanes, cpu/rda_lanes.h). V supports + - * +=, is
// built from a constant as V(c), and has overloads of rda_tanh, rda_relu,
// rda_relu_slope and rda_round found by argument-dependent lookup. Lane by lane
// the arithmetic is the same, in the same order, as for one accumulator.

template <typename V>
struct RdaCoefficients {
  V d, u, v, r;
};

template <typename acc_t>
C10_HOST_DEVICE inline acc_t rda_tanh(acc_t x) {
#if defined(__CUDA_ARCH__)
  return ::tanh(x);
#else
  return std::tanh(x);
#endif
}

template <typename acc_t>
C10_HOST_DEVICE inline acc_t rda_relu(acc_t x) {
  return x > acc_t(0) ? x : acc_t(0);
}

// d relu / dx at x: 1 where x > 0, else 0.
template <typename acc_t>
C10_HOST_DEVICE inline acc_t rda_relu_slope(acc_t x) {
  return x > acc_t(0) ? acc_t(1) : acc_t(0);
}

// x rounded to scalar_t and back: the value a stored stage tensor holds.
template <typename scalar_t, typename acc_t>
C10_HOST_DEVICE inline acc_t rda_round(acc_t x) {
  return static_cast<acc_t>(static_cast<scalar_t>(x));
}

template <typename V>
C10_HOST_DEVICE inline V rda_reaction(V x, int64_t kind) {
  if (kind == kReactionTanh) {
    return rda_tanh(x);
  }
  if (kind == kReactionRelu) {
    return rda_relu(x);
  }
  return V(0);
}

// d rho / dx at x, given rho = rda_reaction(x, kind): 1 - rho^2 for tanh, so
// that the slope costs no tanh of its own.
template <typename V>
C10_HOST_DEVICE inline V rda_reaction_slope(V x, V rho, int64_t kind) {
  if (kind == kReactionTanh) {
    return V(1) - rho * rho;
  }
  if (kind == kReactionRelu) {
    return rda_relu_slope(x);
  }
  return V(0);
}

// The neighbours of tap (i, j) in an H x W slice, zero-flux at the border.
struct RdaStencil {
  int center, up, down, left, right;
  C10_HOST_DEVICE RdaStencil(int i, int j, int H, int W)
      : center(i * W + j),
        up(i > 0 ? center - W : center),
        down(i + 1 < H ? center + W : center),
        left(j > 0 ? center - 1 : center),
        right(j + 1 < W ? center + 1 : center) {}
};

// The three differential terms at one tap: lap, dx, dy.
template <typename V>
struct RdaTerms {
  V lap, dx, dy;
};

template <typename V>
C10_HOST_DEVICE inline RdaTerms<V> rda_terms(const V* theta, const RdaStencil& s) {
  const V c = theta[s.center];
  RdaTerms<V> t;
  t.lap = theta[s.up] + theta[s.down] + theta[s.left] + theta[s.right] - V(4) * c;
  t.dx = (theta[s.right] - theta[s.left]) * V(0.5);
  t.dy = (theta[s.down] - theta[s.up]) * V(0.5);
  return t;
}

// q(theta) of one slice; rho(theta) also into `rho` unless it is null.
template <typename V>
C10_HOST_DEVICE inline void rda_slice(const V* theta, V* q, int H, int W, RdaCoefficients<V> k, int64_t kind,
                                      V* rho = nullptr) {
  RDA_UNROLL
  for (int i = 0; i < H; ++i) {
    RDA_UNROLL
    for (int j = 0; j < W; ++j) {
      const RdaStencil s(i, j, H, W);
      const RdaTerms<V> t = rda_terms(theta, s);
      const V r = rda_reaction(theta[s.center], kind);
      if (rho != nullptr) {
        rho[s.center] = r;
      }
      q[s.center] = k.d * t.lap + k.u * t.dx + k.v * t.dy + k.r * r;
    }
  }
}

// The adjoint of q at `theta` applied to `q_bar`: adds J^T q_bar to theta_bar and
// the gradient with respect to (d, u, v, r) to sums[0..3]. Each forward
// dependency is scattered back, so the result is the exact transpose. `rho` holds
// rho(theta) from rda_slice, or is null and rho is evaluated here.
template <typename V>
C10_HOST_DEVICE inline void rda_slice_backward(const V* theta, const V* q_bar, V* theta_bar, V* sums, int H, int W,
                                               RdaCoefficients<V> k, int64_t kind, const V* rho = nullptr) {
  RDA_UNROLL
  for (int i = 0; i < H; ++i) {
    RDA_UNROLL
    for (int j = 0; j < W; ++j) {
      const RdaStencil s(i, j, H, W);
      const V g = q_bar[s.center];
      const RdaTerms<V> t = rda_terms(theta, s);
      const V r = rho != nullptr ? rho[s.center] : rda_reaction(theta[s.center], kind);
      sums[0] += g * t.lap;
      sums[1] += g * t.dx;
      sums[2] += g * t.dy;
      sums[3] += g * r;
      const V dg = k.d * g;
      theta_bar[s.up] += dg;
      theta_bar[s.down] += dg;
      theta_bar[s.left] += dg;
      theta_bar[s.right] += dg;
      theta_bar[s.center] -= V(4) * dg;
      const V ug = k.u * g * V(0.5);
      theta_bar[s.right] += ug;
      theta_bar[s.left] -= ug;
      const V vg = k.v * g * V(0.5);
      theta_bar[s.down] += vg;
      theta_bar[s.up] -= vg;
      theta_bar[s.center] += k.r * g * rda_reaction_slope(theta[s.center], r, kind);
    }
  }
}

// An explicit RK tableau as the fused step uses it: a[i][j] (j < i) and b[i],
// each already multiplied by h and rounded to acc_t, as rk_combine does.
template <typename acc_t>
struct RdaTableau {
  int stages;
  acc_t ha[kRdaMaxStages][kRdaMaxStages];
  acc_t hb[kRdaMaxStages];
};

// Stage input i of a slice, theta + sum_{j<i} ha[i][j] q[j], into x; for i >= 1
// rounded through scalar_t, as the stored stage tensor is.
template <int TAPS, typename scalar_t, typename V, typename acc_t>
C10_HOST_DEVICE inline void rda_stage_input(const V* theta, const V (*q)[TAPS], int i, int taps,
                                            const RdaTableau<acc_t>& tab, V* x) {
  RDA_UNROLL
  for (int e = 0; e < taps; ++e) {
    V acc = theta[e];
    RDA_UNROLL
    for (int j = 0; j < i; ++j) {
      if (tab.ha[i][j] != acc_t(0)) {
        acc = rk_accumulate(acc, V(tab.ha[i][j]), q[j][e]);
      }
    }
    x[e] = i == 0 ? acc : rda_round<scalar_t>(acc);
  }
}

// One RK step of dtheta/dt = q(theta) on a slice of at most TAPS taps. Calls
// emit(i, x) with each output as soon as it is formed: the stage inputs
// theta^(i) for i = 1 .. stages - 1, then the new weight for i = stages. Leaves
// q at every stage in q. Holding only q (not every stage input) keeps the
// per-slice arrays of a GPU thread small. The stage loops run to the bucket's
// STAGES and stop at the tableau's: the same operations in the same order, with
// constant indices once unrolled.
template <int TAPS, typename scalar_t, typename V, typename acc_t, typename Emit, int STAGES>
C10_HOST_DEVICE inline void rda_rk_slice(const V* theta, V (&q)[STAGES][TAPS], int H, int W, RdaCoefficients<V> k,
                                         int64_t kind, const RdaTableau<acc_t>& tab, Emit&& emit) {
  const int taps = H * W;
  V x[TAPS];
  RDA_UNROLL
  for (int i = 0; i < STAGES; ++i) {
    if (i >= tab.stages) {
      break;
    }
    rda_stage_input<TAPS, scalar_t>(theta, q, i, taps, tab, x);
    if (i > 0) {
      emit(i, static_cast<const V*>(x));
    }
    rda_slice(x, q[i], H, W, k, kind);
  }
  RDA_UNROLL
  for (int e = 0; e < taps; ++e) {
    V acc = theta[e];
    RDA_UNROLL
    for (int i = 0; i < STAGES; ++i) {
      if (i < tab.stages && tab.hb[i] != acc_t(0)) {
        acc = rk_accumulate(acc, V(tab.hb[i]), q[i][e]);
      }
    }
    x[e] = acc;
  }
  emit(tab.stages, static_cast<const V*>(x));
}

// The adjoint of rda_rk_slice. grad(i, e) is the gradient of output i (numbered
// as emit numbers them) at tap e. Writes the gradient of theta to theta_bar and
// adds the coefficient gradients to sums[0..3].
//
// The stages are swept backwards. Stage i's q_bar collects b_i * grad(stages)
// and a_mi times the adjoint of every later stage input m as soon as that one is
// complete, so one array per stage suffices (the stage inputs are re-formed from
// q when needed rather than kept). q and q_bar are the caller's scratch; so is
// rho, which keeps rho at every stage from the first sweep for the second (the
// CPU kernels, where tanh is the dearest operation), or is null and rho is
// evaluated again (a GPU thread, whose arrays should stay small).
template <int TAPS, typename scalar_t, typename V, typename acc_t, typename Grad, int STAGES>
C10_HOST_DEVICE inline void rda_rk_slice_backward(const V* theta, Grad&& grad, V (&q)[STAGES][TAPS],
                                                  V (&q_bar)[STAGES][TAPS], V (*rho)[TAPS], V* theta_bar, V* sums,
                                                  int H, int W, RdaCoefficients<V> k, int64_t kind,
                                                  const RdaTableau<acc_t>& tab) {
  const int taps = H * W;
  const int stages = tab.stages;
  V x[TAPS];
  RDA_UNROLL
  for (int i = 0; i < STAGES; ++i) {
    if (i >= stages) {
      break;
    }
    rda_stage_input<TAPS, scalar_t>(theta, q, i, taps, tab, x);
    rda_slice(x, q[i], H, W, k, kind, rho != nullptr ? rho[i] : nullptr);
  }
  RDA_UNROLL
  for (int e = 0; e < taps; ++e) {
    const V g = grad(stages, e);
    theta_bar[e] = g;
    RDA_UNROLL
    for (int i = 0; i < STAGES; ++i) {
      if (i < stages) {
        q_bar[i][e] = V(tab.hb[i]) * g;
      }
    }
  }
  V x_bar[TAPS];
  RDA_UNROLL
  for (int i = STAGES - 1; i >= 0; --i) {
    if (i >= stages) {
      continue;
    }
    rda_stage_input<TAPS, scalar_t>(theta, q, i, taps, tab, x);
    RDA_UNROLL
    for (int e = 0; e < taps; ++e) {
      x_bar[e] = i == 0 ? V(0) : grad(i, e);
    }
    rda_slice_backward(x, q_bar[i], x_bar, sums, H, W, k, kind, rho != nullptr ? rho[i] : nullptr);
    RDA_UNROLL
    for (int e = 0; e < taps; ++e) {
      theta_bar[e] += x_bar[e];
      RDA_UNROLL
      for (int j = 0; j < i; ++j) {
        if (tab.ha[i][j] != acc_t(0)) {
          q_bar[j][e] += V(tab.ha[i][j]) * x_bar[e];
        }
      }
    }
  }
}

// Checks shared by the CPU and CUDA kernels; return the slice geometry.
struct RdaGeometry {
  int64_t cout, cin;
  int H, W;
};
RdaGeometry check_rda_args(const char* op, const at::Tensor& theta, const at::Tensor& coefficients,
                           int64_t reaction);
// The tableau of a step op: 1 to kRdaMaxStages stages, the strictly lower triangle
// of a, finite entries and a finite h.
void check_rda_tableau(const char* op, at::ArrayRef<double> a, at::ArrayRef<double> b, double h);
// The gradients a backward op takes: `outputs` of them, each of theta's shape,
// dtype and device.
void check_rda_grads(const char* op, at::TensorList grads, size_t outputs, const at::Tensor& theta);

template <typename acc_t>
inline RdaTableau<acc_t> make_rda_tableau(at::ArrayRef<double> a, at::ArrayRef<double> b,
                                          double h) {
  RdaTableau<acc_t> tab{};
  tab.stages = static_cast<int>(b.size());
  size_t next = 0;
  for (int i = 0; i < tab.stages; ++i) {
    for (int j = 0; j < i; ++j) {
      tab.ha[i][j] = static_cast<acc_t>(h * a[next++]);
    }
    tab.hb[i] = static_cast<acc_t>(h * b[i]);
  }
  return tab;
}

}  // namespace anode_ext
