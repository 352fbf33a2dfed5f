"""grad='anode': keep only the block input; recompute the block in backward.

The forward runs under no_grad and saves the input state. The backward replays
the forward's RNG and autocast state, recomputes the Nt steps with autograd on,
and backpropagates through them: the gradient is exactly that of the discrete
solve (discretize-then-optimize), with O(Nt) memory for the one block being
differentiated and O(1) per block otherwise.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._recompute import ForwardState, buffers_unchanged
from .solver import Problem, State

DOUBLE_BACKWARD_MESSAGE = (
    "grad='{mode}' computes its gradient by recomputation inside backward and cannot be "
    "differentiated again (double backward / create_graph=True); use grad='direct' for "
    "higher-order derivatives"
)


def refuse_double_backward(mode: str) -> None:
    """Raise when a recompute-based backward is itself being recorded for differentiation."""
    if torch.is_grad_enabled():
        raise RuntimeError(DOUBLE_BACKWARD_MESSAGE.format(mode=mode))


def gradients(
    outputs: State,
    grad_outputs: tuple[Tensor | None, ...],
    wrt: list[Tensor],
) -> list[Tensor | None]:
    """d(outputs)/d(wrt) contracted with grad_outputs; None where there is no dependence."""
    pairs = [(o, g) for o, g in zip(outputs, grad_outputs) if g is not None and o.requires_grad]
    if not pairs or not wrt:
        return [None] * len(wrt)
    return list(
        torch.autograd.grad([o for o, _ in pairs], wrt, [g for _, g in pairs], allow_unused=True)
    )


class AnodeFunction(torch.autograd.Function):
    """apply(problem, forward_state, first_k, n_state, *state, *params) -> outputs."""

    @staticmethod
    def forward(ctx, problem: Problem, forward_state: ForwardState, first_k, n_state: int, *tensors):
        state = tensors[:n_state]
        with torch.no_grad():
            outputs = problem.solve(state, first_k)
        # Outputs nobody differentiates (the final weights of a coupled block, say)
        # then reach backward as None and cost nothing.
        ctx.set_materialize_grads(False)
        ctx.problem = problem
        ctx.forward_state = forward_state
        ctx.n_state = n_state
        # Parameters are held by their modules anyway; only the state is saved.
        ctx.params = tensors[n_state:]
        ctx.save_for_backward(*state)
        return outputs

    @staticmethod
    def backward(ctx, *grad_outputs):
        refuse_double_backward("anode")
        needs = ctx.needs_input_grad[4:]
        replay = ctx.forward_state
        # Buffers are restored only after the gradient is taken: the recomputed graph
        # may have saved them (BatchNorm's running statistics).
        with buffers_unchanged():
            with torch.enable_grad(), replay.rng_replay(), replay.autocast():
                state = tuple(s.detach().requires_grad_(needs[i]) for i, s in enumerate(ctx.saved_tensors))
                outputs = ctx.problem.solve(state)
            wrt_index = [i for i in range(len(needs)) if needs[i]]
            everything = (*state, *ctx.params)
            computed = gradients(outputs, grad_outputs, [everything[i] for i in wrt_index])
        grads: list[Tensor | None] = [None] * len(needs)
        for i, g in zip(wrt_index, computed):
            grads[i] = g
        return (None, None, None, None, *grads)
