// Autograd of rk_combine and of its backward, registered for the Autograd key.
//
// The formulas live in C++ rather than in torch.library.register_autograd: the
// Python route costs about 150 us per call with inputs that require grad (a
// Python autograd.Function per call), the C++ route a few us, and a solver
// makes several calls per step (see docs/design_decisions.md). Each backward
// is itself a dispatcher op, so double backward works too.

#include <torch/csrc/autograd/custom_function.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/library.h>

#include <algorithm>
#include <memory>
#include <type_traits>

#include "../rk_combine.h"

namespace anode_ext {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The backward node of rk_combine. It is written against Node directly rather
// than as a torch::autograd::Function: it saves no tensors, and skipping the
// Function machinery (its context map, output wrapping and per-call checks)
// halves the cost of the node, which a solver pays several times per step
// (docs/design_decisions.md).
struct RkCombineGrad : torch::autograd::Node {
  RkCombineGrad(std::vector<double> weights_, double h_) : weights(std::move(weights_)), h(h_) {}

  std::string name() const override { return "RkCombineBackward"; }

  // Inputs are y, then each k; an undefined gradient is autograd's zero.
  variable_list apply(variable_list&& grad_outputs) override {
    const at::Tensor& grad = grad_outputs[0];
    variable_list grads(1 + weights.size());
    if (should_compute_output(0)) {
      grads[0] = grad;
    }
    if (!grad.defined() || h == 0.0) {
      return grads;
    }
    // Only ks that need a gradient and have a nonzero coefficient get a tensor,
    // and ks with equal weights (RK4's two 1/3) share one: autograd never writes
    // into a gradient that another input also holds.
    std::vector<double> distinct;
    std::vector<size_t> slot(weights.size(), kNone);
    for (size_t i = 0; i < weights.size(); ++i) {
      if (!should_compute_output(1 + i) || weights[i] == 0.0) {
        continue;
      }
      const auto found = std::find(distinct.begin(), distinct.end(), weights[i]);
      slot[i] = static_cast<size_t>(found - distinct.begin());
      if (found == distinct.end()) {
        distinct.push_back(weights[i]);
      }
    }
    if (distinct.empty()) {
      return grads;
    }
    const std::vector<at::Tensor> scaled = call_rk_combine_backward(grad, distinct, h);
    for (size_t i = 0; i < weights.size(); ++i) {
      if (slot[i] != kNone) {
        grads[1 + i] = scaled[slot[i]];
      }
    }
    return grads;
  }

  static constexpr size_t kNone = static_cast<size_t>(-1);
  std::vector<double> weights;
  double h;
};

// Autograd holds nodes by std::shared_ptr with deleteNode as the deleter up to
// torch 2.12 and by c10::intrusive_ptr from 2.13; Edge::function names whichever
// this torch uses. Both branches depend on N, so only the one taken is compiled
// (deleteNode, found by argument-dependent lookup, need not exist in newer torch).
using NodePtr = decltype(torch::autograd::Edge::function);

template <typename N, typename... Args>
NodePtr make_node(Args&&... args) {
  if constexpr (std::is_same_v<NodePtr, std::shared_ptr<torch::autograd::Node>>) {
    return std::shared_ptr<N>(new N(std::forward<Args>(args)...), [](N* node) { deleteNode(node); });
  } else {
    return c10::make_intrusive<N>(std::forward<Args>(args)...);
  }
}

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

bool has_forward_grad(const at::Tensor& y, at::TensorList ks) {
  return torch::autograd::isFwGradDefined(y) || torch::autograd::isFwGradDefinedTensorList(ks);
}

at::Tensor rk_combine_autograd(const at::Tensor& y, at::TensorList ks,
                               at::ArrayRef<double> weights, double h) {
  TORCH_CHECK(!has_forward_grad(y, ks),
              "rk_combine: forward-mode AD is not supported; expected y and ks without forward "
              "gradients (use reverse mode: backward() or torch.autograd.grad)");
  at::Tensor out;
  {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    out = call_rk_combine(y, ks, weights, h);
  }
  if (torch::autograd::compute_requires_grad(y, ks)) {
    NodePtr node = make_node<RkCombineGrad>(weights.vec(), h);
    node->set_next_edges(torch::autograd::collect_next_edges(y, ks));
    torch::autograd::set_history(out, node);
  }
  return out;
}

// rk_combine_backward records a graph only for double backward (a backward
// pass with create_graph=True); other calls skip the autograd Function, which
// costs more than the kernel on small states.
std::vector<at::Tensor> rk_combine_backward_autograd(const at::Tensor& grad,
                                                     at::ArrayRef<double> weights, double h) {
  TORCH_CHECK(!has_forward_grad(grad, {}),
              "rk_combine_backward: forward-mode AD is not supported; expected grad without a "
              "forward gradient (use reverse mode: backward() or torch.autograd.grad)");
  if (!torch::autograd::compute_requires_grad(grad)) {
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
