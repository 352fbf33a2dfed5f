// Autograd of the RDA ops, registered for the Autograd key (as for rk_combine,
// a C++ registration costs a tenth of the Python one per call). Their backward
// ops are not differentiable: asked to record a graph (double backward), they
// raise an error instead of returning a silently wrong second derivative.

#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

namespace anode_ext {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

class RdaRhs : public torch::autograd::Function<RdaRhs> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& theta, const at::Tensor& coefficients,
                            int64_t reaction) {
    ctx->save_for_backward({theta, coefficients});
    ctx->saved_data["reaction"] = reaction;
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("anode_ext::rda_rhs", "")
                         .typed<at::Tensor(const at::Tensor&, const at::Tensor&, int64_t)>();
    return op.call(theta, coefficients, reaction);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& grad = grad_outputs[0];
    if (!grad.defined()) {
      return {at::Tensor(), at::Tensor(), at::Tensor()};
    }
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("anode_ext::rda_rhs_backward", "")
                         .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                                   const at::Tensor&, int64_t)>();
    auto [grad_theta, grad_coefficients] = op.call(grad, saved[0], saved[1], ctx->saved_data["reaction"].toInt());
    return {ctx->needs_input_grad(0) ? grad_theta : at::Tensor(),
            ctx->needs_input_grad(1) ? grad_coefficients : at::Tensor(), at::Tensor()};
  }
};

class RdaRkStep : public torch::autograd::Function<RdaRkStep> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& theta, const at::Tensor& coefficients,
                               int64_t reaction, at::ArrayRef<double> a, at::ArrayRef<double> b, double h) {
    ctx->save_for_backward({theta, coefficients});
    ctx->saved_data["reaction"] = reaction;
    ctx->saved_data["a"] = a.vec();
    ctx->saved_data["b"] = b.vec();
    ctx->saved_data["h"] = h;
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("anode_ext::rda_rk_step", "")
                         .typed<std::vector<at::Tensor>(const at::Tensor&, const at::Tensor&, int64_t,
                                                        at::ArrayRef<double>, at::ArrayRef<double>, double)>();
    return op.call(theta, coefficients, reaction, a, b, h);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& theta = saved[0];
    // An output that received no gradient contributes zero.
    std::vector<at::Tensor> grads;
    for (const at::Tensor& g : grad_outputs) {
      grads.push_back(g.defined() ? g : at::zeros_like(theta));
    }
    static auto op =
        c10::Dispatcher::singleton()
            .findSchemaOrThrow("anode_ext::rda_rk_step_backward", "")
            .typed<std::tuple<at::Tensor, at::Tensor>(at::TensorList, const at::Tensor&, const at::Tensor&, int64_t,
                                                      at::ArrayRef<double>, at::ArrayRef<double>, double)>();
    auto [grad_theta, grad_coefficients] =
        op.call(grads, theta, saved[1], ctx->saved_data["reaction"].toInt(), ctx->saved_data["a"].toDoubleVector(),
                ctx->saved_data["b"].toDoubleVector(), ctx->saved_data["h"].toDouble());
    return {ctx->needs_input_grad(0) ? grad_theta : at::Tensor(),
            ctx->needs_input_grad(1) ? grad_coefficients : at::Tensor(),
            at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor rda_rhs_autograd(const at::Tensor& theta, const at::Tensor& coefficients, int64_t reaction) {
  return RdaRhs::apply(theta, coefficients, reaction);
}

std::vector<at::Tensor> rda_rk_step_autograd(const at::Tensor& theta, const at::Tensor& coefficients,
                                             int64_t reaction, at::ArrayRef<double> a, at::ArrayRef<double> b,
                                             double h) {
  return RdaRkStep::apply(theta, coefficients, reaction, a, b, h);
}

void refuse_double_backward(const char* op, std::initializer_list<at::Tensor> inputs) {
  if (!at::GradMode::is_enabled()) {
    return;
  }
  for (const at::Tensor& t : inputs) {
    TORCH_CHECK(!(t.defined() && t.requires_grad()), op,
                " is not differentiable: double backward (create_graph=True) through the RDA "
                "weight dynamics is not supported");
  }
}

std::tuple<at::Tensor, at::Tensor> rda_rhs_backward_autograd(const at::Tensor& grad, const at::Tensor& theta,
                                                             const at::Tensor& coefficients, int64_t reaction) {
  refuse_double_backward("rda_rhs_backward", {grad, theta, coefficients});
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("anode_ext::rda_rhs_backward", "")
                       .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                                 const at::Tensor&, int64_t)>();
  return op.call(grad, theta, coefficients, reaction);
}

std::tuple<at::Tensor, at::Tensor> rda_rk_step_backward_autograd(at::TensorList grads, const at::Tensor& theta,
                                                                 const at::Tensor& coefficients, int64_t reaction,
                                                                 at::ArrayRef<double> a, at::ArrayRef<double> b,
                                                                 double h) {
  refuse_double_backward("rda_rk_step_backward", {theta, coefficients});
  for (const at::Tensor& g : grads) {
    refuse_double_backward("rda_rk_step_backward", {g});
  }
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  static auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("anode_ext::rda_rk_step_backward", "")
          .typed<std::tuple<at::Tensor, at::Tensor>(at::TensorList, const at::Tensor&, const at::Tensor&, int64_t,
                                                    at::ArrayRef<double>, at::ArrayRef<double>, double)>();
  return op.call(grads, theta, coefficients, reaction, a, b, h);
}

}  // namespace

TORCH_LIBRARY_IMPL(anode_ext, Autograd, m) {
  m.impl("rda_rhs", &rda_rhs_autograd);
  m.impl("rda_rk_step", &rda_rk_step_autograd);
  m.impl("rda_rhs_backward", &rda_rhs_backward_autograd);
  m.impl("rda_rk_step_backward", &rda_rk_step_backward_autograd);
}

}  // namespace anode_ext
