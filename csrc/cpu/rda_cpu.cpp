// CPU kernels of the RDA ops: one filter slice per iteration, slices split
// across threads; coefficient gradients are summed per output channel.

#include "../rda.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

namespace anode_ext {
namespace {

template <typename scalar_t, typename acc_t>
RdaCoefficients<acc_t> coefficients_of(const scalar_t* coeffs, int64_t cout, int64_t channel) {
  return {static_cast<acc_t>(coeffs[channel]), static_cast<acc_t>(coeffs[cout + channel]),
          static_cast<acc_t>(coeffs[2 * cout + channel]), static_cast<acc_t>(coeffs[3 * cout + channel])};
}

template <typename scalar_t, typename acc_t>
void load(acc_t* dst, const scalar_t* src, int taps) {
  for (int e = 0; e < taps; ++e) {
    dst[e] = static_cast<acc_t>(src[e]);
  }
}

template <typename scalar_t, typename acc_t>
void store(scalar_t* dst, const acc_t* src, int taps) {
  for (int e = 0; e < taps; ++e) {
    dst[e] = static_cast<scalar_t>(src[e]);
  }
}

at::Tensor rda_rhs_cpu(const at::Tensor& theta, const at::Tensor& coefficients, int64_t reaction) {
  const RdaGeometry g = check_rda_args("rda_rhs", theta, coefficients, reaction);
  const at::Tensor th = theta.contiguous();
  const at::Tensor co = coefficients.contiguous();
  at::Tensor out = at::empty_like(th);
  const int taps = g.H * g.W;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, th.scalar_type(), "rda_rhs_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* t_ptr = th.const_data_ptr<scalar_t>();
    const scalar_t* c_ptr = co.const_data_ptr<scalar_t>();
    scalar_t* o_ptr = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, g.cout * g.cin, 64, [&](int64_t begin, int64_t end) {
      acc_t slice[kRdaMaxTaps];
      acc_t q[kRdaMaxTaps];
      for (int64_t s = begin; s < end; ++s) {
        load(slice, t_ptr + s * taps, taps);
        rda_slice(slice, q, g.H, g.W, coefficients_of<scalar_t, acc_t>(c_ptr, g.cout, s / g.cin), reaction);
        store(o_ptr + s * taps, q, taps);
      }
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> rda_rhs_backward_cpu(const at::Tensor& grad, const at::Tensor& theta,
                                                        const at::Tensor& coefficients, int64_t reaction) {
  const RdaGeometry g = check_rda_args("rda_rhs_backward", theta, coefficients, reaction);
  check_rda_grad("rda_rhs_backward", grad, theta);
  const at::Tensor th = theta.contiguous();
  const at::Tensor gr = grad.contiguous();
  const at::Tensor co = coefficients.contiguous();
  at::Tensor grad_theta = at::empty_like(th);
  at::Tensor grad_coefficients = at::empty_like(co);
  const int taps = g.H * g.W;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, th.scalar_type(), "rda_rhs_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* t_ptr = th.const_data_ptr<scalar_t>();
    const scalar_t* g_ptr = gr.const_data_ptr<scalar_t>();
    const scalar_t* c_ptr = co.const_data_ptr<scalar_t>();
    scalar_t* gt_ptr = grad_theta.mutable_data_ptr<scalar_t>();
    scalar_t* gc_ptr = grad_coefficients.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, g.cout, 1, [&](int64_t begin, int64_t end) {
      acc_t slice[kRdaMaxTaps];
      acc_t q_bar[kRdaMaxTaps];
      acc_t slice_bar[kRdaMaxTaps];
      for (int64_t channel = begin; channel < end; ++channel) {
        const auto k = coefficients_of<scalar_t, acc_t>(c_ptr, g.cout, channel);
        acc_t sums[4] = {0, 0, 0, 0};
        for (int64_t s = channel * g.cin; s < (channel + 1) * g.cin; ++s) {
          load(slice, t_ptr + s * taps, taps);
          load(q_bar, g_ptr + s * taps, taps);
          for (int e = 0; e < taps; ++e) {
            slice_bar[e] = acc_t(0);
          }
          rda_slice_backward(slice, q_bar, slice_bar, sums, g.H, g.W, k, reaction);
          store(gt_ptr + s * taps, slice_bar, taps);
        }
        for (int row = 0; row < 4; ++row) {
          gc_ptr[row * g.cout + channel] = static_cast<scalar_t>(sums[row]);
        }
      }
    });
  });
  return {grad_theta, grad_coefficients};
}

std::vector<at::Tensor> rda_rk_step_cpu(const at::Tensor& theta, const at::Tensor& coefficients,
                                        int64_t reaction, at::ArrayRef<double> a,
                                        at::ArrayRef<double> b, double h) {
  const RdaGeometry g = check_rda_args("rda_rk_step", theta, coefficients, reaction);
  check_rda_tableau(a, b);
  const at::Tensor th = theta.contiguous();
  const at::Tensor co = coefficients.contiguous();
  const int stages = static_cast<int>(b.size());
  std::vector<at::Tensor> outs;
  for (int i = 0; i < stages; ++i) {
    outs.push_back(at::empty_like(th));
  }
  const int taps = g.H * g.W;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, th.scalar_type(), "rda_rk_step_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto tab = make_rda_tableau<acc_t>(a, b, h);
    const scalar_t* t_ptr = th.const_data_ptr<scalar_t>();
    const scalar_t* c_ptr = co.const_data_ptr<scalar_t>();
    std::vector<scalar_t*> o_ptrs;
    for (at::Tensor& o : outs) {
      o_ptrs.push_back(o.mutable_data_ptr<scalar_t>());
    }
    dispatch_taps_and_stages(taps, stages, [&](auto taps_bucket, auto stages_bucket) {
      constexpr int TAPS = decltype(taps_bucket)::value;
      constexpr int STAGES = decltype(stages_bucket)::value;
      at::parallel_for(0, g.cout * g.cin, 16, [&](int64_t begin, int64_t end) {
        acc_t slice[TAPS];
        acc_t q[STAGES][TAPS];
        for (int64_t s = begin; s < end; ++s) {
          load(slice, t_ptr + s * taps, taps);
          rda_rk_slice<TAPS, scalar_t>(slice, q, g.H, g.W, coefficients_of<scalar_t, acc_t>(c_ptr, g.cout, s / g.cin),
                                       reaction, tab,
                                       [&](int i, const acc_t* x) { store(o_ptrs[i - 1] + s * taps, x, taps); });
        }
      });
    });
  });
  return outs;
}

std::tuple<at::Tensor, at::Tensor> rda_rk_step_backward_cpu(at::TensorList grads, const at::Tensor& theta,
                                                            const at::Tensor& coefficients, int64_t reaction,
                                                            at::ArrayRef<double> a, at::ArrayRef<double> b,
                                                            double h) {
  const RdaGeometry g = check_rda_args("rda_rk_step_backward", theta, coefficients, reaction);
  check_rda_tableau(a, b);
  const int stages = static_cast<int>(b.size());
  TORCH_CHECK(static_cast<int>(grads.size()) == stages, "rda_rk_step_backward: got ", grads.size(),
              " gradients for ", stages, " outputs");
  const at::Tensor th = theta.contiguous();
  const at::Tensor co = coefficients.contiguous();
  std::vector<at::Tensor> gr;
  for (const at::Tensor& t : grads) {
    check_rda_grad("rda_rk_step_backward", t, theta);
    gr.push_back(t.contiguous());
  }
  at::Tensor grad_theta = at::empty_like(th);
  at::Tensor grad_coefficients = at::empty_like(co);
  const int taps = g.H * g.W;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, th.scalar_type(), "rda_rk_step_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto tab = make_rda_tableau<acc_t>(a, b, h);
    const scalar_t* t_ptr = th.const_data_ptr<scalar_t>();
    const scalar_t* c_ptr = co.const_data_ptr<scalar_t>();
    std::vector<const scalar_t*> g_ptrs;
    for (const at::Tensor& t : gr) {
      g_ptrs.push_back(t.const_data_ptr<scalar_t>());
    }
    scalar_t* gt_ptr = grad_theta.mutable_data_ptr<scalar_t>();
    scalar_t* gc_ptr = grad_coefficients.mutable_data_ptr<scalar_t>();
    dispatch_taps_and_stages(taps, stages, [&](auto taps_bucket, auto stages_bucket) {
      constexpr int TAPS = decltype(taps_bucket)::value;
      constexpr int STAGES = decltype(stages_bucket)::value;
      at::parallel_for(0, g.cout, 1, [&](int64_t begin, int64_t end) {
        acc_t slice[TAPS];
        acc_t q[STAGES][TAPS];
        acc_t q_bar[STAGES][TAPS];
        acc_t slice_bar[TAPS];
        for (int64_t channel = begin; channel < end; ++channel) {
          const auto k = coefficients_of<scalar_t, acc_t>(c_ptr, g.cout, channel);
          acc_t sums[4] = {0, 0, 0, 0};
          for (int64_t s = channel * g.cin; s < (channel + 1) * g.cin; ++s) {
            load(slice, t_ptr + s * taps, taps);
            const auto grad = [&](int i, int e) { return static_cast<acc_t>(g_ptrs[i - 1][s * taps + e]); };
            rda_rk_slice_backward<TAPS, scalar_t>(slice, grad, q, q_bar, slice_bar, sums, g.H, g.W, k, reaction,
                                                  tab);
            store(gt_ptr + s * taps, slice_bar, taps);
          }
          for (int row = 0; row < 4; ++row) {
            gc_ptr[row * g.cout + channel] = static_cast<scalar_t>(sums[row]);
          }
        }
      });
    });
  });
  return {grad_theta, grad_coefficients};
}

}  // namespace

TORCH_LIBRARY_IMPL(anode_ext, CPU, m) {
  m.impl("rda_rhs", &rda_rhs_cpu);
  m.impl("rda_rhs_backward", &rda_rhs_backward_cpu);
  m.impl("rda_rk_step", &rda_rk_step_cpu);
  m.impl("rda_rk_step_backward", &rda_rk_step_backward_cpu);
}

}  // namespace anode_ext
