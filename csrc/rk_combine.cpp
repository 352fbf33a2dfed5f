// Argument checks and layout handling shared by the CPU and CUDA kernels of
// rk_combine. Every message names what was wrong and what was expected.

#include "rk_combine.h"

#include <ATen/ATen.h>
#include <ATen/MemoryOverlap.h>
#include <ATen/core/dispatch/Dispatcher.h>

namespace anode_ext {

static bool is_supported_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

static void check_floating(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(is_supported_float(t.scalar_type()), op, ": ", name, " has dtype ",
              t.scalar_type(),
              "; expected a floating dtype (float32, float64, float16 or bfloat16)");
}

void check_rk_combine_args(const at::Tensor& y, at::TensorList ks,
                           at::ArrayRef<double> weights) {
  check_floating(y, "rk_combine", "y");
  TORCH_CHECK(!ks.empty(), "rk_combine: ks is empty; expected at least one k tensor");
  TORCH_CHECK(weights.size() == ks.size(), "rk_combine: got ", weights.size(),
              " weights for ", ks.size(), " ks; expected one weight per k");
  for (size_t i = 0; i < ks.size(); ++i) {
    const at::Tensor& k = ks[i];
    TORCH_CHECK(k.device() == y.device(), "rk_combine: ks[", i, "] is on ", k.device(),
                " but y is on ", y.device(), "; expected every k on y's device");
    TORCH_CHECK(k.scalar_type() == y.scalar_type(), "rk_combine: ks[", i,
                "] has dtype ", k.scalar_type(), " but y has dtype ", y.scalar_type(),
                "; expected every k to have y's dtype");
    TORCH_CHECK(k.sizes() == y.sizes(), "rk_combine: ks[", i, "] has shape ", k.sizes(),
                " but y has shape ", y.sizes(), "; expected every k to have y's shape");
  }
}

void check_rk_combine_out(const at::Tensor& out, const at::Tensor& y, at::TensorList ks) {
  TORCH_CHECK(out.device() == y.device(), "rk_combine_out: out is on ", out.device(),
              " but y is on ", y.device(), "; expected out on y's device");
  TORCH_CHECK(out.scalar_type() == y.scalar_type(), "rk_combine_out: out has dtype ",
              out.scalar_type(), " but y has dtype ", y.scalar_type(),
              "; expected out to have y's dtype");
  TORCH_CHECK(out.sizes() == y.sizes(), "rk_combine_out: out has shape ", out.sizes(),
              " but y has shape ", y.sizes(), "; expected out to have y's shape");
  TORCH_CHECK(at::has_internal_overlap(out) != at::MemOverlap::Yes,
              "rk_combine_out: several elements of out share one memory location (e.g. an "
              "expanded tensor); expected out to own each of its elements");
  // Writing over an operand element by element is safe only when it is the very
  // same memory (an in-place update), never when it is shifted.
  TORCH_CHECK(at::get_overlap_status(out, y) != at::MemOverlapStatus::Partial,
              "rk_combine_out: out partially overlaps y; expected out to be y itself or "
              "memory disjoint from it");
  for (size_t i = 0; i < ks.size(); ++i) {
    TORCH_CHECK(at::get_overlap_status(out, ks[i]) != at::MemOverlapStatus::Partial,
                "rk_combine_out: out partially overlaps ks[", i,
                "]; expected out to be that k itself or memory disjoint from it");
  }
}

void check_rk_combine_backward_args(const at::Tensor& grad, at::ArrayRef<double> weights) {
  check_floating(grad, "rk_combine_backward", "grad");
  TORCH_CHECK(!weights.empty(),
              "rk_combine_backward: weights is empty; expected at least one weight");
}

at::Tensor rk_combine_with(CombineInto combine_into, const at::Tensor& y, at::TensorList ks,
                           at::ArrayRef<double> weights, double h) {
  check_rk_combine_args(y, ks, weights);
  // empty_like is always dense and keeps a dense input's layout (e.g.
  // channels_last), so inputs that share it are read in place.
  const at::Tensor out = at::empty_like(y);
  combine_into(out, y, ks, weights, h);
  return out;
}

void rk_combine_out_with(CombineInto combine_into, const at::Tensor& out, const at::Tensor& y,
                         at::TensorList ks, at::ArrayRef<double> weights, double h) {
  check_rk_combine_args(y, ks, weights);
  check_rk_combine_out(out, y, ks);
  if (is_flat_writable(out)) {
    combine_into(out, y, ks, weights, h);
    return;
  }
  const at::Tensor dense = at::empty_like(out, at::MemoryFormat::Contiguous);
  combine_into(dense, y, ks, weights, h);
  out.copy_(dense);
}

at::Tensor call_rk_combine(const at::Tensor& y, at::TensorList ks, at::ArrayRef<double> weights,
                           double h) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("anode_ext::rk_combine", "")
                       .typed<at::Tensor(const at::Tensor&, at::TensorList, at::ArrayRef<double>, double)>();
  return op.call(y, ks, weights, h);
}

std::vector<at::Tensor> call_rk_combine_backward(const at::Tensor& grad,
                                                 at::ArrayRef<double> weights, double h) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("anode_ext::rk_combine_backward", "")
                       .typed<std::vector<at::Tensor>(const at::Tensor&, at::ArrayRef<double>, double)>();
  return op.call(grad, weights, h);
}

bool is_flat_writable(const at::Tensor& t) { return t.is_non_overlapping_and_dense(); }

at::Tensor match_layout(const at::Tensor& t, const at::Tensor& like) {
  if (t.strides() == like.strides() && t.is_non_overlapping_and_dense()) {
    return t;
  }
  return at::empty_like(like).copy_(t);
}

}  // namespace anode_ext
