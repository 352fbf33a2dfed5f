#pragma once
// Python bindings of anode_ext._C beyond the torch.ops ops: each binds its part
// into the module made in module.cpp.

#include <torch/extension.h>

namespace anode_ext {

// The Runge–Kutta step loop (solver_step.cpp).
void bind_solver_step(pybind11::module_& m);

// The saved-tensor bookkeeping of the recomputing gradient modes (saved_ledger.cpp).
void bind_saved_ledger(pybind11::module_& m);

}  // namespace anode_ext
