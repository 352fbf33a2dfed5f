#pragma once
// Operands handed to one kernel launch by value (the ks of a stage sum and their
// coefficients). Kernels index them only inside loops unrolled to kMaxOperands,
// so every index is a constant and the arrays are read straight from the
// parameter space, never copied to local memory. A sum of more operands runs as
// several launches.

namespace anode_ext {

constexpr int kMaxOperands = 16;

template <typename T>
struct OperandArray {
  T items[kMaxOperands];
};

}  // namespace anode_ext
