"""Adaptive step-size solves with an embedded Runge–Kutta pair (Hairer, Nørsett & Wanner,
Solving ODEs I, section II.4).

An AdaptiveProblem runs the step-size controller: each attempted step gives a candidate
state and an estimate of its local error; the step is accepted when the error, scaled by
``atol + rtol * max(|y_n|, |y_{n+1}|)``, has a norm <= 1, and the next step size follows
from that norm either way. The choice of step sizes is not differentiated: gradients treat
the accepted time grid as constant, as the Adaptive Checkpoint Adjoint (Zhuang et al., ICML
2020) and torchdiffeq do.

Every attempt, accepted or rejected, is written to a log. A LoggedProblem replays a log:
it has a Problem's interface (steps = the accepted steps), so the recompute modes
(grad='anode', 'revolve') run it as they run a fixed-step solve, and recompute exactly the
accepted steps of the forward. It evaluates the rejected attempts and the initial-step
probe again too, in their places, so that random numbers and module buffers evolve as in
the forward and the modes' ledger meets every tensor the forward saved; what those
attempts saved is let go at once (anode_ext.modes.adaptive_recompute).

The state of both problems is ``(*y, *k)``: k holds func's value at (t, y) when the pair is
FSAL and it is known (from the previous step's last stage), else a placeholder (y again).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor

from .embedded import EmbeddedTableau, get_pair
from .solver import State, StateFunc, checked_derivative, combine_stages

__all__ = ["Adaptive", "AdaptiveProblem", "LoggedProblem", "SolverStats"]

_rk_combine = torch.ops.anode_ext.rk_combine.default
_rk_error_norm = torch.ops.anode_ext.rk_error_norm.default

NORMS = ("rms", "max_sample")
MAX_FUSED_TERMS = 16
"""The most error terms the fused error norm takes in one pass (its CUDA kernel's bound)."""
OPTIONS = ("rtol", "atol", "first_step", "max_steps", "controller", "safety", "min_factor", "max_factor", "norm")
CONTROLLERS = ("pi", "i")


def _positive(value: object, name: str, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or \
            value < 0 or (value == 0 and not allow_zero):
        expected = "a finite real number >= 0" if allow_zero else "a finite real number > 0"
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    return float(value)


def _tolerance(value: object, name: str) -> float | Tensor:
    if isinstance(value, Tensor):
        if not value.is_floating_point() or value.requires_grad:
            raise ValueError(f"{name} as a tensor must be a floating tensor that does not require grad, got {value!r}")
        if not torch.isfinite(value).all() or (value < 0).any():
            raise ValueError(f"{name} must be finite and >= 0, got {value!r}")
        return value.detach()
    return _positive(value, name, allow_zero=True)


@dataclass(frozen=True, eq=False)
class Adaptive:
    """An adaptive-step method: pass one as ``method=`` to odeint or ODEBlock, or write
    ``method="dopri5"`` (any name of PAIRS) for these defaults, which are torchdiffeq's.

    Args:
        pair: the embedded pair, a name in PAIRS ("bosh3", "dopri5", "tsit5") or an
            EmbeddedTableau.
        rtol, atol: the relative and absolute tolerances: a step is accepted when the
            norm of ``error / (atol + rtol * max(|y_n|, |y_{n+1}|))`` is <= 1. Real numbers
            >= 0 or floating tensors broadcastable to the state (not both zero anywhere);
            other tensors of a solve's state (a coupled block's weights, the adjoint's
            gradients) take a tensor tolerance's smallest element.
        first_step: the first step's size (> 0, in units of t; its sign follows the
            direction of integration), or None to choose it from the derivative at t0
            (Hairer, Nørsett & Wanner, Solving ODEs I, II.4, "starting step size"; one
            extra evaluation of func).
        max_steps: the most attempted steps (accepted and rejected) one solve may take
            (one odeint call or block forward, every output time included).
        controller: "i" (the integral controller, factor err^(-1/q) with q =
            min(order, error_order) + 1: torchdiffeq's, torchode's and diffrax's default) or
            "pi" (Gustafsson's PI controller with Hairer–Wanner's exponents 0.7/q and 0.4/q:
            smoother step sequences where the I controller oscillates between rejections,
            at the cost of slower step growth).
        safety, min_factor, max_factor: the step-size factor is safety times the
            controller's, clipped to [1, max_factor] after an accepted step (an accepted
            step is not followed by a smaller one, as in torchdiffeq and diffrax) and to
            [min_factor, max_factor] after a rejected one.
        norm: "rms" (root mean square over every element of the state) or "max_sample"
            (the largest root mean square over one sample along the state's first
            dimension: one sample's error cannot hide in the batch's mean; other tensors
            of the solve's state, such as a coupled block's weights, count as one sample
            each).

    Raises:
        ValueError: for any option that is not as described.
    """

    pair: EmbeddedTableau
    rtol: float | Tensor = 1e-7
    atol: float | Tensor = 1e-9
    first_step: float | None = None
    max_steps: int = 10_000
    controller: str = "i"
    safety: float = 0.9
    min_factor: float = 0.2
    max_factor: float = 10.0
    norm: str = "rms"

    def __init__(self, pair: str | EmbeddedTableau = "dopri5", *, rtol: float | Tensor = 1e-7,
                 atol: float | Tensor = 1e-9, first_step: float | None = None, max_steps: int = 10_000,
                 controller: str = "i", safety: float = 0.9, min_factor: float = 0.2, max_factor: float = 10.0,
                 norm: str = "rms") -> None:
        set_ = object.__setattr__
        set_(self, "pair", get_pair(pair))
        set_(self, "rtol", _tolerance(rtol, "rtol"))
        set_(self, "atol", _tolerance(atol, "atol"))
        if all(not isinstance(v, Tensor) and v == 0 for v in (self.rtol, self.atol)):
            raise ValueError("rtol and atol are both zero; no step could be accepted")
        set_(self, "first_step", None if first_step is None else _positive(first_step, "first_step"))
        if isinstance(max_steps, bool) or not isinstance(max_steps, numbers.Integral) or max_steps < 1:
            raise ValueError(f"max_steps must be an integer >= 1, got {max_steps!r}")
        set_(self, "max_steps", int(max_steps))
        if controller not in CONTROLLERS:
            raise ValueError(f"controller must be one of {', '.join(CONTROLLERS)}, got {controller!r}")
        set_(self, "controller", controller)
        set_(self, "safety", _positive(safety, "safety"))
        if self.safety > 1:
            raise ValueError(f"safety must be in (0, 1], got {safety!r}")
        set_(self, "min_factor", _positive(min_factor, "min_factor"))
        set_(self, "max_factor", _positive(max_factor, "max_factor"))
        if not self.min_factor < 1 < self.max_factor:
            raise ValueError(f"expected min_factor < 1 < max_factor, got {min_factor!r} and {max_factor!r}")
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
        set_(self, "norm", norm)

    @property
    def name(self) -> str:
        return self.pair.name

    @property
    def stages(self) -> int:
        return self.pair.stages

    def with_options(self, **changes: object) -> Adaptive:
        """This method with the options in `changes` replaced (checked as by the constructor)."""
        options = {name: getattr(self, name) for name in OPTIONS}
        unknown = sorted(set(changes) - set(options))
        if unknown:
            raise ValueError(f"Adaptive has no option {', '.join(unknown)}; it has {', '.join(OPTIONS)}")
        return Adaptive(self.pair, **{**options, **changes})

    @property
    def exponents(self) -> tuple[float, float]:
        """The controller's (alpha, beta): factor = safety * err_n^-alpha * err_{n-1}^beta."""
        q = min(self.pair.order, self.pair.error_order) + 1
        return (1.0 / q, 0.0) if self.controller == "i" else (0.7 / q, 0.4 / q)

    def _key(self) -> tuple:
        return (self.pair, *(id(v) if isinstance(v, Tensor) else v for v in (getattr(self, n) for n in OPTIONS)))

    # Tensor tolerances compare elementwise; two methods are the same when they hold the same tensors.
    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        shown = [repr(self.name)]
        for name, default in (("rtol", 1e-7), ("atol", 1e-9), ("first_step", None), ("max_steps", 10_000),
                              ("controller", "i"), ("safety", 0.9), ("min_factor", 0.2), ("max_factor", 10.0),
                              ("norm", "rms")):
            value = getattr(self, name)
            if isinstance(value, Tensor) or value != default:
                shown.append(f"{name}=<tensor {tuple(value.shape)}>" if isinstance(value, Tensor) else
                             f"{name}={value!r}")
        return f"Adaptive({', '.join(shown)})"


@dataclass
class SolverStats:
    """What adaptive solves did, added up over the solves it is passed to (``stats=`` of
    odeint). Recompute modes evaluate func again in backward; that is not counted here.

    Attributes:
        accepted, rejected: steps accepted and rejected.
        evaluations: func evaluations of the solve (NFE), the initial-step probe included.
        initial_step: the size of the first step tried by the latest call (units of t).
    """

    accepted: int = 0
    rejected: int = 0
    evaluations: int = 0
    initial_step: float | None = None


@dataclass(frozen=True)
class Attempt:
    """One attempted step in a log: its start time, size and whether it was accepted."""

    t: float
    h: float
    accepted: bool


@dataclass
class Log:
    """What a solve did: the initial-step probe's size (or None) and every attempt."""

    probe: float | None = None
    attempts: list[Attempt] = field(default_factory=list)


class AttemptObserver(Protocol):
    """Told when the work of each attempted step (and of the initial-step probe) starts and
    ends, and whether its result was kept: grad='anode' lets go of what a rejected
    attempt saved for backward."""

    def starts(self) -> None:
        """An attempt (or the probe) starts."""

    def ends(self, kept: bool) -> None:
        """It ended; `kept`: its result is part of the solve (an accepted step)."""

    def step_done(self, state: State, final: bool) -> State:
        """A step was accepted: `state` is the state after it, as LoggedProblem.step
        returns it; `final`: the solve has reached t1. Returns the state to go on from."""


@dataclass
class AdaptiveProblem:
    """An adaptive solve of ``d(state)/dt = func(t, state)`` from t0 to t1 (floats).

    Its state is ``(*y, *k)`` (module docstring); ``k_given`` says whether k holds func at
    (t0, y), as it does when the solve continues one that ended there with an FSAL pair.
    `h`, `previous_error` and `attempted` (the attempts made so far, which max_steps
    bounds) carry the controller over from such a solve. `solve` runs the controller under
    whatever autograd mode is on (grad='direct' differentiates it); after it, `log` holds
    its attempts and `h` the next step size it proposes.
    """

    func: StateFunc
    method: Adaptive
    t0: float
    t1: float
    k_given: bool = False
    h: float | None = None
    previous_error: float = 1e-4
    stats: SolverStats | None = None
    attempted: int = 0
    log: Log | None = None
    return_all: bool = False

    def solve(self, state: State, observer: AttemptObserver | None = None) -> State:
        """The state at t1, ``(*y, *k)``; fills `log`, `stats`, the next `h` and `attempted`.
        `observer` is told of each attempt and step.

        Raises:
            ValueError: for tolerances that do not fit the state.
            RuntimeError: when max_steps attempts do not reach t1, when the step size
                underflows or is not finite (the time reached is named).
        """
        half = len(state) // 2
        y, k = state[:half], state[half:]
        check_tolerances(self.method, y)
        self.log = Log()
        self._evaluations = 0
        try:
            return self._solve(y, k, observer)
        finally:
            if self.stats is not None:
                self.stats.accepted += sum(a.accepted for a in self.log.attempts)
                self.stats.rejected += sum(not a.accepted for a in self.log.attempts)
                self.stats.evaluations += self._evaluations
            self.attempted += len(self.log.attempts)

    def _solve(self, y: State, k: State, observer: AttemptObserver | None) -> State:
        method, pair, log = self.method, self.method.pair, self.log
        direction = 1.0 if self.t1 > self.t0 else -1.0
        if not self.k_given:
            k = checked_derivative(self.func(self.t0, y), y)
            self._evaluations += 1
        h = self.h
        if h is None:
            if method.first_step is not None:
                h = method.first_step * direction
            else:
                if observer is not None:
                    observer.starts()
                h, log.probe = self._initial_step(y, k, direction)
                if observer is not None:
                    observer.ends(False)
                self._evaluations += 1
            if self.stats is not None:
                self.stats.initial_step = h
        t, previous = self.t0, self.previous_error
        alpha, beta = method.exponents
        while (self.t1 - t) * direction > 0:
            if self.attempted + len(log.attempts) >= method.max_steps:
                raise RuntimeError(
                    f"adaptive solve: max_steps={method.max_steps} attempted steps reached t={t:.6g} "
                    f"({sum(a.accepted for a in log.attempts)} accepted since t={self.t0:g}, on the way to "
                    f"{self.t1:g}); raise max_steps, loosen rtol/atol, or check func for stiffness or a blow-up"
                )
            natural = h
            last = (t + h - self.t1) * direction >= 0
            if last:
                h = self.t1 - t
            if not math.isfinite(h) or t + h == t:
                raise RuntimeError(
                    f"adaptive solve: the step size became {h:.3g} at t={t:.6g}: the state or func's value is not "
                    "finite there (a blow-up, or a non-finite initial state), atol is 0 where the state is 0, or "
                    "the tolerances are beyond what the state's dtype resolves at that t"
                )
            if observer is not None:
                observer.starts()
            y1, ks = attempt(self.func, pair, t, h, y, k)
            self._evaluations += pair.stages - 1
            ratio = error_ratio(pair, method, h, y, y1, ks)
            accepted = ratio <= 1.0
            if observer is not None:
                observer.ends(accepted)
            log.attempts.append(Attempt(t, h, accepted))
            if ratio == 0.0:
                factor = method.max_factor
            elif not math.isfinite(ratio):
                factor = method.min_factor
            else:
                # An accepted step is not followed by a smaller one (torchdiffeq's and
                # diffrax's rule): its error was within the tolerance.
                factor = method.safety * ratio ** -alpha * previous ** beta
                factor = min(method.max_factor, max(1.0 if accepted else method.min_factor, factor))
            if accepted:
                t = self.t1 if last else t + h
                y = y1
                k = ks[-1] if pair.fsal else None
                previous = max(ratio, 1e-4)
                if observer is not None:
                    stepped = observer.step_done((*y, *(k if k is not None else y)), t == self.t1)
                    y = stepped[:len(y)]
                    k = stepped[len(y):] if k is not None else None
            # A last step shortened to land on t1 says little about the step size after it.
            h = natural if accepted and last and abs(h * factor) < abs(natural) else h * factor
            if k is None:
                if (self.t1 - t) * direction <= 0:
                    break
                k = checked_derivative(self.func(t, y), y)
                self._evaluations += 1
        self.h, self.previous_error = h, previous
        return (*y, *(k if k is not None else y))

    def _initial_step(self, y: State, f0: State, direction: float) -> tuple[float, float]:
        """Hairer, Nørsett & Wanner, Solving ODEs I, II.4: a step from the sizes of y, f and
        f's change over a small explicit Euler step (which costs one evaluation). Returns
        the step and that Euler step's (signed) size."""
        method = self.method
        with torch.no_grad():
            scale = tuple(_scale(method, v, v) for v in y)
            d0 = _rms([v / s for v, s in zip(y, scale)])
            d1 = _rms([f / s for f, s in zip(f0, scale)])
            if not (math.isfinite(d0) and math.isfinite(d1)):
                raise RuntimeError(
                    f"adaptive solve: the first step cannot be chosen at t={self.t0:g}: the initial state or func's "
                    "value there is not finite, or atol is 0 where the state is 0 (the error there cannot be "
                    "scaled); give atol > 0, a finite initial state, or first_step="
                )
            h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
            h0 = min(h0, abs(self.t1 - self.t0))
        offset = h0 * direction
        f1 = checked_derivative(self.func(self.t0 + offset, euler_probe(y, f0, offset)), y)
        with torch.no_grad():
            d2 = _rms([(b - a) / s for a, b, s in zip(f0, f1, scale)]) / h0
            largest = max(d1, d2)

            # The exponent of the error estimate's order, as the controller's (and torchdiffeq's).
            q = min(method.pair.order, method.pair.error_order) + 1
            h1 = max(1e-6, h0 * 1e-3) if largest <= 1e-15 else (0.01 / largest) ** (1.0 / q)
        return min(100 * h0, h1, abs(self.t1 - self.t0)) * direction, offset

    def logged(self, after_discarded: Callable[[], None] | None = None) -> LoggedProblem:
        """The problem that replays this solve's log (after `solve`); see LoggedProblem
        for `after_discarded`."""
        if self.log is None:
            raise RuntimeError("AdaptiveProblem.logged() needs a log: call solve first")
        return LoggedProblem(self.func, self.method.pair, self.t0, self.k_given, self.log, after_discarded)


def euler_probe(y: State, f: State, offset: float) -> State:
    """``y + offset * f``, detached (the step-size choice is not differentiated), requiring
    grad where y or f does, as a stage would: the state at which the initial-step choice
    evaluates func (which may differentiate with respect to its state)."""
    return tuple((v.detach() + offset * d.detach()).requires_grad_(v.requires_grad or d.requires_grad)
                 for v, d in zip(y, f))


def attempt(func: StateFunc, pair: EmbeddedTableau, t: float, h: float, y: State, k1: State
            ) -> tuple[State, list[State]]:
    """One attempted step from (t, y) with func(t, y) = k1: the candidate state and the
    stages (with an FSAL pair, the last is func at the candidate)."""
    tableau = pair.tableau
    ks = [k1]
    stage = y
    for i in range(1, tableau.stages):
        which, weights = tableau.terms[i]
        stage = combine_stages(y, ks, which, weights, h)
        ks.append(checked_derivative(func(t + tableau.c[i] * h, stage), y))
    if pair.fsal:
        return stage, ks
    which, weights = tableau.terms[-1]
    return combine_stages(y, ks, which, weights, h), ks


def check_tolerances(method: Adaptive, y: State) -> None:
    """A ValueError for tolerances that do not fit the state y: a tensor tolerance that
    does not broadcast to y's first tensor, elements where rtol and atol are both zero, or
    a tolerance beyond the largest number of the dtype the error is measured in."""
    first = y[0]
    limit = torch.finfo(torch.promote_types(first.dtype, torch.float32)).max
    for name in ("rtol", "atol"):
        value = getattr(method, name)
        if isinstance(value, Tensor):
            if not _broadcasts_to(value, first):
                raise ValueError(f"{name} has shape {tuple(value.shape)}, which does not broadcast to the state's "
                                 f"shape {tuple(first.shape)}; give a number or a tensor broadcastable to it")
        largest = float(value.max()) if isinstance(value, Tensor) and value.numel() else float(value) \
            if not isinstance(value, Tensor) else 0.0
        if largest > limit:
            raise ValueError(f"{name}={largest:g} is beyond the largest {first.dtype} number the error is measured in "
                             f"({limit:g})")
    if isinstance(method.rtol, Tensor) or isinstance(method.atol, Tensor):
        total = torch.as_tensor(method.rtol) + torch.as_tensor(method.atol)
        if total.numel() and not bool((total > 0).all()):
            raise ValueError("rtol and atol are both zero for some elements of the state; no step could be accepted")


def _broadcasts_to(value: Tensor, like: Tensor) -> bool:
    """Whether `value` broadcasts to `like`'s shape (without changing it)."""
    try:
        return torch.broadcast_shapes(value.shape, like.shape) == like.shape
    except RuntimeError:
        return False


def _tolerance_for(value: float | Tensor, like: Tensor, dtype: torch.dtype) -> float | Tensor:
    """A tolerance as it applies to the state tensor `like`: a tensor tolerance where it
    broadcasts to it, else (a coupled block's weights, the adjoint's gradients) its
    smallest element."""
    if not isinstance(value, Tensor):
        return value
    value = value.to(device=like.device, dtype=dtype)
    return value if _broadcasts_to(value, like) or not value.numel() else value.min()


def _scale(method: Adaptive, a: Tensor, b: Tensor) -> Tensor:
    """atol + rtol * max(|a|, |b|), in at least float32."""
    dtype = torch.promote_types(a.dtype, torch.float32)
    big = torch.maximum(a.abs(), b.abs()).to(dtype)
    return big.mul_(_tolerance_for(method.rtol, a, dtype)).add_(_tolerance_for(method.atol, a, dtype))


def _rms(parts: list[Tensor]) -> float:
    total = sum(p.square().sum(dtype=torch.float64) for p in parts)
    count = sum(p.numel() for p in parts)
    return math.sqrt(float(total) / max(count, 1))


def error_ratio(pair: EmbeddedTableau, method: Adaptive, h: float, y: State, y1: State, ks: list[State]) -> float:
    """The norm of the scaled local error estimate of an attempt: <= 1 accepts it. The
    root mean square with float tolerances comes from one fused pass per tensor
    (rk_error_norm); tensor tolerances and the per-sample norm are formed from tensors."""
    which, weights = pair.error_terms
    if method.norm == "rms" and not isinstance(method.rtol, Tensor) and not isinstance(method.atol, Tensor) \
            and len(which) <= MAX_FUSED_TERMS:
        with torch.no_grad():
            total = sum(_rk_error_norm(a, b, [ks[j][m].detach() for j in which], list(weights), h, method.rtol,
                                       method.atol) for m, (a, b) in enumerate(zip(y, y1)))
        return math.sqrt(float(total) / max(sum(b.numel() for b in y1), 1))
    with torch.no_grad():
        scaled = []
        for m, (a, b) in enumerate(zip(y, y1)):
            error = _rk_combine(torch.zeros_like(b), [ks[j][m].detach() for j in which], list(weights), h)
            scaled.append(error.to(torch.promote_types(b.dtype, torch.float32)).div_(_scale(method, a, b)))
        first = scaled[0]
        if method.norm == "rms" or first.dim() == 0 or first.numel() == 0:
            return _rms(scaled)
        # The first tensor per sample; any others (a coupled block's weights, which have no
        # batch dimension) each as a whole.
        per_sample = first.square().reshape(first.shape[0], -1).mean(1, dtype=torch.float64)
        largest = float(per_sample.max())
        return max([math.sqrt(largest), *(_rms([s]) for s in scaled[1:] if s.numel())])


@dataclass
class LoggedProblem:
    """A replay of an adaptive solve's log on its accepted grid, with a Problem's interface
    (steps, return_all, step, solve) for the recompute modes. Step n evaluates, in the
    forward's order, func at its start when no earlier stage gave it, the initial-step
    probe (step 0) and the rejected attempts before it, then the accepted step, all under
    the caller's saved-tensor hooks; `after_discarded`, if given, is called after the
    probe and after each rejected attempt (the modes let go of what they saved)."""

    func: StateFunc
    pair: EmbeddedTableau
    t0: float
    k_given: bool
    log: Log
    after_discarded: Callable[[], None] | None = None
    return_all: bool = False

    def __post_init__(self) -> None:
        self.accepted: list[Attempt] = []
        self.rejected: list[list[Attempt]] = [[]]
        for a in self.log.attempts:
            if a.accepted:
                self.accepted.append(a)
                self.rejected.append([])
            else:
                self.rejected[-1].append(a)

    @property
    def steps(self) -> int:
        return len(self.accepted)

    def step(self, n: int, state: State) -> State:
        half = len(state) // 2
        y, k = state[:half], state[half:]
        step = self.accepted[n]
        if not (self.pair.fsal and (n > 0 or self.k_given)):
            k = checked_derivative(self.func(step.t, y), y)
        if n == 0 and self.log.probe is not None:
            offset = self.log.probe
            checked_derivative(self.func(step.t + offset, euler_probe(y, k, offset)), y)
            self._discarded()
        for rejected in self.rejected[n]:
            attempt(self.func, self.pair, rejected.t, rejected.h, y, k)
            self._discarded()
        y1, ks = attempt(self.func, self.pair, step.t, step.h, y, k)
        return (*y1, *(ks[-1] if self.pair.fsal else y1))

    def solve(self, state: State) -> State:
        for n in range(self.steps):
            state = self.step(n, state)
        return state

    def _discarded(self) -> None:
        if self.after_discarded is not None:
            self.after_discarded()
