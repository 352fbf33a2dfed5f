// Autograd of rk_combine and of its backward, registered for the Autograd key.
//
// The formulas live in C++ rather than in torch.library.register_autograd: the
// Python route costs about 150 us per call with inputs that require grad (a
// Python autograd.Function per call), the C++ route about 10 us, and a solver
// makes several calls per step (see docs/design_decisions.md). Each backward
// is itself a dispatcher op, so double backward works too.

#include <torch/csrc/autograd/custom_function.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/library.h>

#include "../rk_combine.h"

namespace anode_ext {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

class RkCombine : public torch::autograd::Function<RkCombine> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& y, at::TensorList ks,
                            at::ArrayRef<double> weights, double h) {
    ctx->saved_data["weights"] = weights.vec();
    ctx->saved_data["h"] = h;
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return call_rk_combine(y, ks, weights, h);
  }

  // Inputs are y, then each k; weights and h get no gradient.
  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const std::vector<double> weights = ctx->saved_data["weights"].toDoubleVector();
    const double h = ctx->saved_data["h"].toDouble();
    const at::Tensor& grad = grad_outputs[0];
    variable_list grads(1 + weights.size() + 2);
    if (ctx->needs_input_grad(0)) {
      grads[0] = grad;
    }
    // Only ks that need a gradient and have a nonzero coefficient get a tensor;
    // an undefined gradient is autograd's zero.
    std::vector<size_t> live;
    std::vector<double> live_weights;
    for (size_t i = 0; i < weights.size(); ++i) {
      if (ctx->needs_input_grad(1 + i) && weights[i] != 0.0 && h != 0.0) {
        live.push_back(i);
        live_weights.push_back(weights[i]);
      }
    }
    if (!live.empty() && grad.defined()) {
      std::vector<at::Tensor> scaled = call_rk_combine_backward(grad, live_weights, h);
      for (size_t j = 0; j < live.size(); ++j) {
        grads[1 + live[j]] = scaled[j];
      }
    }
    return grads;
  }
};

class RkCombineBackward : public torch::autograd::Function<RkCombineBackward> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& grad,
                               at::ArrayRef<double> weights, double h) {
    ctx->saved_data["weights"] = weights.vec();
    ctx->saved_data["h"] = h;
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return call_rk_combine_backward(grad, weights, h);
  }

  // The map grad -> (h w_i grad)_i is linear; its adjoint sums h w_i gg_i,
  // which is an rk_combine onto zeros.
  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const std::vector<double> weights = ctx->saved_data["weights"].toDoubleVector();
    const double h = ctx->saved_data["h"].toDouble();
    std::vector<at::Tensor> present;
    std::vector<double> present_weights;
    for (size_t i = 0; i < grad_outputs.size(); ++i) {
      if (grad_outputs[i].defined()) {
        present.push_back(grad_outputs[i]);
        present_weights.push_back(weights[i]);
      }
    }
    if (present.empty()) {
      return {at::Tensor(), at::Tensor(), at::Tensor()};
    }
    return {call_rk_combine(at::zeros_like(present[0]), present, present_weights, h), at::Tensor(),
            at::Tensor()};
  }
};

// Calls that record nothing (no_grad, inference, a backward pass that is not
// building a graph) skip the autograd Function: it costs more than the kernel
// on small states.
bool records_graph(const at::Tensor& y, at::TensorList ks) {
  return torch::autograd::compute_requires_grad(y, ks) ||
         torch::autograd::isFwGradDefined(y) || torch::autograd::isFwGradDefinedTensorList(ks);
}

at::Tensor rk_combine_autograd(const at::Tensor& y, at::TensorList ks,
                               at::ArrayRef<double> weights, double h) {
  if (!records_graph(y, ks)) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return call_rk_combine(y, ks, weights, h);
  }
  return RkCombine::apply(y, ks, weights, h);
}

std::vector<at::Tensor> rk_combine_backward_autograd(const at::Tensor& grad,
                                                     at::ArrayRef<double> weights, double h) {
  if (!records_graph(grad, {})) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return call_rk_combine_backward(grad, weights, h);
  }
  return RkCombineBackward::apply(grad, weights, h);
}

}  // namespace

TORCH_LIBRARY_IMPL(anode_ext, Autograd, m) {
  m.impl("rk_combine", &rk_combine_autograd);
  m.impl("rk_combine_backward", &rk_combine_backward_autograd);
}

}  // namespace anode_ext
