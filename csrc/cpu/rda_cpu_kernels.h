// The CPU kernels of the RDA ops, compiled once per instruction set: included by
// rda_cpu_baseline.cpp and rda_cpu_avx2.cpp with ANODE_EXT_RDA_ISA naming the
// namespace their definitions go to, so the two compilations share no symbol.
// A translation unit that compiles them for a wider instruction set includes
// every header below first (all with #pragma once), so that only what this file
// defines takes its target.
//
// The per-slice math of rda.h runs on RdaLanes: each pass works on a group of
// consecutive filter slices, one per lane (8 in float, 4 in double), so the
// stencil arithmetic is vectorized and tanh is evaluated for a whole group by
// one vector call. Groups are split across threads. Coefficient gradients are
// summed per slice, then per output channel in slice order: the result does not
// depend on the number of threads.

#ifndef ANODE_EXT_RDA_ISA
#error "define ANODE_EXT_RDA_ISA before including rda_cpu_kernels.h"
#endif

#include "../rda.h"
#include "rda_kernel_table.h"
#include "rda_lanes.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <type_traits>
#include <vector>

namespace anode_ext {
namespace ANODE_EXT_RDA_ISA {
namespace {

// Groups of slices per task: a few hundred slices, tens of microseconds of work.
constexpr int64_t kGroupGrain = 16;

// The lanes of a group's slices: slices first .. first + count - 1 of the weight.
struct SliceGroup {
  int64_t first;
  int count;
};

// Calls fn(group) for every group of slices, groups split across threads. The
// callers' bodies are flattened (everything they call inlined), so that the math
// of rda.h is compiled with this file's instruction set.
template <typename acc_t, typename Fn>
void for_each_group(int64_t slices, const Fn& fn) {
  constexpr int L = RdaLanes<acc_t>::kLanes;
  const int64_t groups = (slices + L - 1) / L;
  at::parallel_for(0, groups, kGroupGrain, [&](int64_t begin, int64_t end) {
    for (int64_t group = begin; group < end; ++group) {
      const int64_t first = group * L;
      fn(SliceGroup{first, static_cast<int>(std::min<int64_t>(L, slices - first))});
    }
  });
}

// Calls fn(H, W, group) for every group of slices of the weight, with the slice
// shape as compile-time constants for 3x3 and 1x1 filters, the commonest, so that
// the stencil loops unroll (ints otherwise). TAPS bounds the slice's taps (the caller's
// arrays hold that many): shapes that cannot occur within it are not compiled, so the
// compiler sees no array indexed past its end. Within one tap a slice is 1x1 or empty.
template <typename acc_t, int TAPS = kRdaMaxTaps, typename Fn>
void for_each_shaped_group(const RdaGeometry& g, const Fn& fn) {
  const auto groups = [&](auto H, auto W) {
    for_each_group<acc_t>(g.cout * g.cin, [&](SliceGroup group) { fn(H, W, group); });
  };
  using Zero = std::integral_constant<int, 0>;
  using One = std::integral_constant<int, 1>;
  using Three = std::integral_constant<int, 3>;
  if constexpr (TAPS >= 9) {
    if (g.H == 3 && g.W == 3) {
      groups(Three{}, Three{});
      return;
    }
  }
  if (g.H == 1 && g.W == 1) {
    groups(One{}, One{});
  } else if constexpr (TAPS > 1) {
    groups(g.H, g.W);
  } else {
    groups(Zero{}, Zero{});  // H * W == 0: slices without taps
  }
}

// (d, u, v, r) of the output channel of each lane's slice (lanes past the group's
// count take its first slice's). One division per group: a division per lane cost
// more than the whole stencil of a 1x1 filter.
template <typename scalar_t, typename acc_t>
RdaCoefficients<RdaLanes<acc_t>> coefficients_of(const scalar_t* coeffs, int64_t cout, int64_t cin,
                                                 SliceGroup group) {
  using V = RdaLanes<acc_t>;
  const int64_t first_channel = group.first / cin;
  const int64_t offset = group.first - first_channel * cin;  // of the first slice within its channel
  if (offset + group.count <= cin) {
    const auto at = [&](int row) { return V(static_cast<acc_t>(coeffs[row * cout + first_channel])); };
    return {at(0), at(1), at(2), at(3)};
  }
  typename V::Raw rows[4];
  int64_t channel = first_channel;
  int64_t within = offset;
  for (int l = 0; l < V::kLanes; ++l) {
    if (l < group.count && within == cin) {
      ++channel;
      within = 0;
    }
    for (int row = 0; row < 4; ++row) {
      rows[row][l] = static_cast<acc_t>(coeffs[row * cout + (l < group.count ? channel : first_channel)]);
    }
    ++within;
  }
  return {V(rows[0]), V(rows[1]), V(rows[2]), V(rows[3])};
}

template <typename acc_t>
RdaLanes<acc_t> zero() {
  return RdaLanes<acc_t>(acc_t(0));
}

// Keeps the per-slice coefficient gradients of a group: partial[row][slice].
template <typename acc_t>
void keep_slice_sums(acc_t* partial, int64_t slices, const RdaLanes<acc_t>* sums, SliceGroup group) {
  alignas(32) acc_t values[RdaLanes<acc_t>::kLanes];
  for (int row = 0; row < 4; ++row) {
    sums[row].store(values);
    std::copy(values, values + group.count, partial + row * slices + group.first);
  }
}

// The coefficient gradients: per output channel, the slices' sums in slice order.
template <typename scalar_t, typename acc_t>
void sum_per_channel(scalar_t* grad_coeffs, const acc_t* partial, int64_t cout, int64_t cin) {
  const int64_t slices = cout * cin;
  at::parallel_for(0, cout, 64, [&](int64_t begin, int64_t end) {
    for (int64_t channel = begin; channel < end; ++channel) {
      for (int row = 0; row < 4; ++row) {
        acc_t sum = 0;
        for (int64_t s = channel * cin; s < (channel + 1) * cin; ++s) {
          sum += partial[row * slices + s];
        }
        grad_coeffs[row * cout + channel] = static_cast<scalar_t>(sum);
      }
    }
  });
}

template <typename acc_t>
at::Tensor slice_sums_buffer(const at::Tensor& theta, int64_t slices) {
  return at::empty({4, slices}, theta.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
}

void rhs(const at::Tensor& theta, const at::Tensor& coefficients, const RdaGeometry& g, int64_t reaction,
         at::Tensor& out) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, theta.scalar_type(), "rda_rhs_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    using V = RdaLanes<acc_t>;
    const scalar_t* t_ptr = theta.const_data_ptr<scalar_t>();
    const scalar_t* c_ptr = coefficients.const_data_ptr<scalar_t>();
    scalar_t* o_ptr = out.mutable_data_ptr<scalar_t>();
    for_each_shaped_group<acc_t>(g, [&](auto H, auto W, SliceGroup group) __attribute__((flatten)) {
      const int taps = H * W;
      V slice[kRdaMaxTaps];
      V q[kRdaMaxTaps];
      gather_slices(slice, t_ptr, group.first, group.count, taps);
      rda_slice(slice, q, H, W, coefficients_of<scalar_t, acc_t>(c_ptr, g.cout, g.cin, group), reaction);
      scatter_slices(o_ptr, q, group.first, group.count, taps);
    });
  });
}

void rhs_backward(const at::Tensor& grad, const at::Tensor& theta, const at::Tensor& coefficients,
                  const RdaGeometry& g, int64_t reaction, at::Tensor& grad_theta, at::Tensor& grad_coefficients) {
  const int64_t slices = g.cout * g.cin;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, theta.scalar_type(), "rda_rhs_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    using V = RdaLanes<acc_t>;
    const scalar_t* t_ptr = theta.const_data_ptr<scalar_t>();
    const scalar_t* g_ptr = grad.const_data_ptr<scalar_t>();
    const scalar_t* c_ptr = coefficients.const_data_ptr<scalar_t>();
    scalar_t* gt_ptr = grad_theta.mutable_data_ptr<scalar_t>();
    at::Tensor partial = slice_sums_buffer<acc_t>(theta, slices);
    acc_t* p_ptr = partial.mutable_data_ptr<acc_t>();
    for_each_shaped_group<acc_t>(g, [&](auto H, auto W, SliceGroup group) __attribute__((flatten)) {
      const int taps = H * W;
      V slice[kRdaMaxTaps];
      V q_bar[kRdaMaxTaps];
      V slice_bar[kRdaMaxTaps];
      gather_slices(slice, t_ptr, group.first, group.count, taps);
      gather_slices(q_bar, g_ptr, group.first, group.count, taps);
      std::fill(slice_bar, slice_bar + taps, zero<acc_t>());
      V sums[4] = {zero<acc_t>(), zero<acc_t>(), zero<acc_t>(), zero<acc_t>()};
      rda_slice_backward(slice, q_bar, slice_bar, sums, H, W,
                         coefficients_of<scalar_t, acc_t>(c_ptr, g.cout, g.cin, group), reaction);
      scatter_slices(gt_ptr, slice_bar, group.first, group.count, taps);
      keep_slice_sums(p_ptr, slices, sums, group);
    });
    sum_per_channel(grad_coefficients.mutable_data_ptr<scalar_t>(), p_ptr, g.cout, g.cin);
  });
}

void rk_step(const at::Tensor& theta, const at::Tensor& coefficients, const RdaGeometry& g, int64_t reaction,
             at::ArrayRef<double> a, at::ArrayRef<double> b, double h, std::vector<at::Tensor>& outs) {
  const int taps = g.H * g.W;
  const int stages = static_cast<int>(b.size());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, theta.scalar_type(), "rda_rk_step_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    using V = RdaLanes<acc_t>;
    const auto tab = make_rda_tableau<acc_t>(a, b, h);
    const scalar_t* t_ptr = theta.const_data_ptr<scalar_t>();
    const scalar_t* c_ptr = coefficients.const_data_ptr<scalar_t>();
    std::vector<scalar_t*> o_ptrs;
    for (at::Tensor& o : outs) {
      o_ptrs.push_back(o.mutable_data_ptr<scalar_t>());
    }
    dispatch_taps_and_stages(taps, stages, [&](auto taps_bucket, auto stages_bucket) {
      constexpr int TAPS = decltype(taps_bucket)::value;
      constexpr int STAGES = decltype(stages_bucket)::value;
      for_each_shaped_group<acc_t, TAPS>(g, [&](auto H, auto W, SliceGroup group) __attribute__((flatten)) {
        const int shaped_taps = H * W;
        V slice[TAPS];
        V q[STAGES][TAPS];
        gather_slices(slice, t_ptr, group.first, group.count, shaped_taps);
        rda_rk_slice<TAPS, scalar_t>(
            slice, q, H, W, coefficients_of<scalar_t, acc_t>(c_ptr, g.cout, g.cin, group), reaction, tab,
            [&](int i, const V* x) { scatter_slices(o_ptrs[i - 1], x, group.first, group.count, shaped_taps); });
      });
    });
  });
}

void rk_step_backward(const std::vector<at::Tensor>& grads, const at::Tensor& theta, const at::Tensor& coefficients,
                      const RdaGeometry& g, int64_t reaction, at::ArrayRef<double> a, at::ArrayRef<double> b,
                      double h, at::Tensor& grad_theta, at::Tensor& grad_coefficients) {
  const int taps = g.H * g.W;
  const int stages = static_cast<int>(b.size());
  const int64_t slices = g.cout * g.cin;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, theta.scalar_type(), "rda_rk_step_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    using V = RdaLanes<acc_t>;
    const auto tab = make_rda_tableau<acc_t>(a, b, h);
    const scalar_t* t_ptr = theta.const_data_ptr<scalar_t>();
    const scalar_t* c_ptr = coefficients.const_data_ptr<scalar_t>();
    std::vector<const scalar_t*> g_ptrs;
    for (const at::Tensor& t : grads) {
      g_ptrs.push_back(t.const_data_ptr<scalar_t>());
    }
    scalar_t* gt_ptr = grad_theta.mutable_data_ptr<scalar_t>();
    at::Tensor partial = slice_sums_buffer<acc_t>(theta, slices);
    acc_t* p_ptr = partial.mutable_data_ptr<acc_t>();
    dispatch_taps_and_stages(taps, stages, [&](auto taps_bucket, auto stages_bucket) {
      constexpr int TAPS = decltype(taps_bucket)::value;
      constexpr int STAGES = decltype(stages_bucket)::value;
      for_each_shaped_group<acc_t, TAPS>(g, [&](auto H, auto W, SliceGroup group) __attribute__((flatten)) {
        const int shaped_taps = H * W;
        V slice[TAPS];
        V q[STAGES][TAPS];
        V q_bar[STAGES][TAPS];
        V rho[STAGES][TAPS];
        V slice_bar[TAPS];
        V output_grads[STAGES][TAPS];
        for (int i = 0; i < stages; ++i) {
          gather_slices(output_grads[i], g_ptrs[i], group.first, group.count, shaped_taps);
        }
        gather_slices(slice, t_ptr, group.first, group.count, shaped_taps);
        V sums[4] = {zero<acc_t>(), zero<acc_t>(), zero<acc_t>(), zero<acc_t>()};
        const auto grad = [&](int i, int e) { return output_grads[i - 1][e]; };
        rda_rk_slice_backward<TAPS, scalar_t>(slice, grad, q, q_bar, rho, slice_bar, sums, H, W,
                                              coefficients_of<scalar_t, acc_t>(c_ptr, g.cout, g.cin, group),
                                              reaction, tab);
        scatter_slices(gt_ptr, slice_bar, group.first, group.count, shaped_taps);
        keep_slice_sums(p_ptr, slices, sums, group);
      });
    });
    sum_per_channel(grad_coefficients.mutable_data_ptr<scalar_t>(), p_ptr, g.cout, g.cin);
  });
}

}  // namespace

const RdaCpuKernels kKernels{rhs, rhs_backward, rk_step, rk_step_backward};

}  // namespace ANODE_EXT_RDA_ISA
}  // namespace anode_ext
