// Explicit Runge–Kutta steps over a state of several tensors, with func a
// Python callable. The loops live in C++ because with a cheap func its Python
// bookkeeping and the Python entry into each rk_combine cost more than the
// arithmetic (docs/design_decisions.md has the measurement). Every tensor
// operation goes through the dispatcher, so autograd records the step exactly
// as it would record the same calls made from Python.

#include <torch/csrc/autograd/python_variable.h>

#include <algorithm>
#include <sstream>
#include <string>
#include <vector>

#include "../rk_combine.h"
#include "bindings.h"

namespace anode_ext {
namespace {

namespace py = pybind11;
using Tensors = std::vector<at::Tensor>;

// A tableau as the step loop reads it: for each stage and then the update, the
// earlier stages that enter (zero coefficients dropped) and their weights.
struct StepPlan {
  std::vector<std::vector<int64_t>> which;
  std::vector<std::vector<double>> weights;
  std::vector<double> c;

  StepPlan(std::vector<std::vector<int64_t>> which_, std::vector<std::vector<double>> weights_,
           std::vector<double> c_)
      : which(std::move(which_)), weights(std::move(weights_)), c(std::move(c_)) {
    TORCH_CHECK(!c.empty(), "StepPlan: a tableau needs at least one stage");
    TORCH_CHECK(which.size() == c.size() + 1 && weights.size() == which.size(),
                "StepPlan: expected ", c.size() + 1, " rows of terms (one per stage, then the "
                "update), got ", which.size(), " index rows and ", weights.size(), " weight rows");
    for (size_t i = 0; i < which.size(); ++i) {
      TORCH_CHECK(which[i].size() == weights[i].size(), "StepPlan: row ", i, " has ",
                  which[i].size(), " indices but ", weights[i].size(), " weights");
      const int64_t limit = static_cast<int64_t>(std::min(i, c.size()));
      for (int64_t j : which[i]) {
        TORCH_CHECK(j >= 0 && j < limit, "StepPlan: row ", i, " refers to stage ", j,
                    "; expected an earlier stage (0..", limit - 1, ")");
      }
    }
  }

  size_t stages() const { return c.size(); }
};

std::string python_shape(at::IntArrayRef sizes) {
  std::ostringstream out;
  out << "(";
  for (size_t i = 0; i < sizes.size(); ++i) {
    out << (i ? ", " : "") << sizes[i];
  }
  out << (sizes.size() == 1 ? ",)" : ")");
  return out.str();
}

std::string type_name(const py::handle& object) {
  return py::str(py::type::handle_of(object).attr("__name__"));
}

// y + h * sum_j w_j ks[j] for each tensor of the state; the state itself when no
// earlier stage enters (the first stage).
Tensors combine(const Tensors& state, const std::vector<Tensors>& ks, const std::vector<int64_t>& which,
                const std::vector<double>& weights, double h) {
  if (which.empty()) {
    return state;
  }
  for (int64_t j : which) {
    TORCH_CHECK(j >= 0 && static_cast<size_t>(j) < ks.size(), "combine_stages: stage ", j,
                " does not exist; ", ks.size(), " stages are known");
    TORCH_CHECK(ks[j].size() == state.size(), "combine_stages: stage ", j, " has ", ks[j].size(),
                " tensors for a state of ", state.size());
  }
  Tensors out;
  out.reserve(state.size());
  Tensors terms;
  terms.reserve(which.size());
  for (size_t m = 0; m < state.size(); ++m) {
    terms.clear();
    for (int64_t j : which) {
      terms.push_back(ks[j][m]);
    }
    out.push_back(call_rk_combine(state[m], terms, weights, h));
  }
  return out;
}

// func's return value as one tensor per state tensor, in the state's dtypes
// (under autocast func may return a lower precision), or a clear error.
Tensors checked_derivative(const py::handle& derivative, const Tensors& state) {
  std::vector<py::object> items;
  if (THPVariable_Check(derivative.ptr())) {
    items.push_back(py::reinterpret_borrow<py::object>(derivative));
  } else if (PySequence_Check(derivative.ptr()) && !py::isinstance<py::str>(derivative)) {
    for (const py::handle& item : py::reinterpret_borrow<py::sequence>(derivative)) {
      items.push_back(py::reinterpret_borrow<py::object>(item));
    }
  } else {
    throw py::type_error("func must return a tensor or a sequence of tensors, got " + type_name(derivative));
  }
  if (items.size() != state.size()) {
    throw std::runtime_error("func returned " + std::to_string(items.size()) + " tensors for a state of " +
                             std::to_string(state.size()));
  }
  Tensors out;
  out.reserve(items.size());
  for (size_t i = 0; i < items.size(); ++i) {
    if (!THPVariable_Check(items[i].ptr())) {
      throw py::type_error("func must return tensors; element " + std::to_string(i) + " is " +
                           type_name(items[i]));
    }
    const at::Tensor& k = THPVariable_Unpack(items[i].ptr());
    const at::Tensor& y = state[i];
    if (k.is_nested() || k.is_quantized() || k.layout() != at::kStrided) {
      std::ostringstream kind;
      kind << (k.is_nested() ? "nested" : k.is_quantized() ? "quantized" : "") << " " << k.layout();
      throw std::runtime_error("func returned a" + kind.str() + " tensor; dy/dt must be a dense (strided) tensor");
    }
    if (!at::isFloatingType(k.scalar_type())) {
      throw std::runtime_error(std::string("func returned a tensor of dtype ") + c10::toString(k.scalar_type()) +
                               "; dy/dt must be a floating tensor (float16, bfloat16, float32 or float64)");
    }
    if (k.sizes() != y.sizes()) {
      throw std::runtime_error("func returned shape " + python_shape(k.sizes()) + " for a state of shape " +
                               python_shape(y.sizes()) + "; dy/dt must have the state's shape");
    }
    if (k.device() != y.device()) {
      throw std::runtime_error("func returned a tensor on " + k.device().str() + " for a state on " +
                               y.device().str());
    }
    out.push_back(k.scalar_type() == y.scalar_type() ? k : k.to(y.scalar_type()));
  }
  return out;
}

py::tuple as_tuple(const Tensors& tensors) {
  py::tuple out(tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    out[i] = py::reinterpret_steal<py::object>(THPVariable_Wrap(tensors[i]));
  }
  return out;
}

// One step of size h from (t, state). With `supplied` stages (solver.Supplied: some
// trailing tensors of the state stepped elsewhere), `state` holds the other tensors:
// func sees each stage of those followed by supplied_stages[i], returns their
// derivatives only, and the step ends with supplied_result appended.
Tensors rk_step_with(const py::object& func, double t, double h, const Tensors& state, const StepPlan& plan,
                     const std::vector<Tensors>& supplied_stages, const Tensors& supplied_result) {
  const bool supplied = !supplied_stages.empty();
  TORCH_CHECK(!supplied || supplied_stages.size() == plan.stages(), "rk_step: ", supplied_stages.size(),
              " supplied stages for a tableau of ", plan.stages(), " stages");
  TORCH_CHECK(supplied || supplied_result.empty(), "rk_step: a supplied result without supplied stages");
  for (const Tensors& stage : supplied_stages) {
    TORCH_CHECK(stage.size() == supplied_result.size(), "rk_step: a supplied stage of ", stage.size(),
                " tensors for a supplied result of ", supplied_result.size());
  }
  std::vector<Tensors> ks;
  ks.reserve(plan.stages());
  for (size_t i = 0; i < plan.stages(); ++i) {
    Tensors stage = combine(state, ks, plan.which[i], plan.weights[i], h);
    if (supplied) {
      stage.insert(stage.end(), supplied_stages[i].begin(), supplied_stages[i].end());
    }
    const py::object derivative = func(t + plan.c[i] * h, as_tuple(stage));
    ks.push_back(checked_derivative(derivative, state));
  }
  Tensors result = combine(state, ks, plan.which.back(), plan.weights.back(), h);
  result.insert(result.end(), supplied_result.begin(), supplied_result.end());
  return result;
}

Tensors rk_step(const py::object& func, double t, double h, const Tensors& state, const StepPlan& plan) {
  return rk_step_with(func, t, h, state, plan, {}, {});
}

// `steps` steps of size h from (t0, state): the final state, or with keep_all every
// state from the initial one on. The times t0 + n h are formed as the Python loop
// forms them, so both see the same floats.
std::vector<Tensors> rk_solve(const py::object& func, double t0, double h, int64_t steps, Tensors state,
                              const StepPlan& plan, bool keep_all) {
  TORCH_CHECK(steps >= 0, "rk_solve: steps must be >= 0, got ", steps);
  std::vector<Tensors> states;
  if (keep_all) {
    states.reserve(static_cast<size_t>(steps) + 1);
    states.push_back(state);
  }
  for (int64_t n = 0; n < steps; ++n) {
    state = rk_step(func, t0 + static_cast<double>(n) * h, h, state, plan);
    if (keep_all) {
      states.push_back(state);
    }
  }
  if (!keep_all) {
    states.push_back(std::move(state));
  }
  return states;
}

}  // namespace

void bind_solver_step(py::module_& m) {
  py::class_<StepPlan>(m, "StepPlan", "A Butcher tableau's nonzero terms, as the C++ step loop reads them.")
      .def(py::init<std::vector<std::vector<int64_t>>, std::vector<std::vector<double>>, std::vector<double>>(),
           py::arg("which"), py::arg("weights"), py::arg("c"));
  m.def("rk_step", &rk_step_with, py::arg("func"), py::arg("t"), py::arg("h"), py::arg("state"), py::arg("plan"),
        py::arg("supplied_stages") = std::vector<Tensors>{}, py::arg("supplied_result") = Tensors{},
        "One Runge-Kutta step of func(t, state) from (t, state): the next state as a list of tensors. With "
        "supplied_stages (one list per stage) state holds the other tensors; func sees each stage of them "
        "followed by the supplied one and returns their derivatives; supplied_result is appended to the result.");
  m.def("rk_solve", &rk_solve, py::arg("func"), py::arg("t0"), py::arg("h"), py::arg("steps"), py::arg("state"),
        py::arg("plan"), py::arg("keep_all") = false,
        "steps Runge-Kutta steps from (t0, state): [final state], or with keep_all every state.");
  m.def("combine_stages", &combine, py::arg("state"), py::arg("ks"), py::arg("which"), py::arg("weights"),
        py::arg("h"), "y + h * sum_j weights[j] * ks[which[j]] for each tensor y of the state.");
  m.def("checked_derivative", &checked_derivative, py::arg("derivative"), py::arg("state"),
        "func's return value as one tensor per state tensor in the state's dtypes, or a clear error.");
}

}  // namespace anode_ext
