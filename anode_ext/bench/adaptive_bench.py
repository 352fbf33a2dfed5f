"""Adaptive solves against torchdiffeq (and torchode, when installed) on the same problems
and tolerances: func evaluations against the error reached, the solver's own cost per
accepted step, and the gradient modes on one adaptive solve."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from ..adaptive import Adaptive, SolverStats
from ..modes import Revolve
from ..odeint import odeint
from .funcs import MLP
from .memory import count_saved_bytes
from .solvers import torchdiffeq
from .solver_costs import bare_evaluations
from .timing import compare_timings, median_paired_difference, noisy_footnote, one_thread, time_cell

try:
    import torchode
except Exception:  # an optional comparison: whatever stops its import leaves it out of the report
    torchode = None

OURS, TORCHDIFFEQ, TORCHODE = "anode_ext", "torchdiffeq", "torchode"


class Counting(nn.Module):
    """A func that counts its evaluations (a call on a batch counts once)."""

    def __init__(self, func: Callable[[float, Tensor], Tensor]) -> None:
        super().__init__()
        self.func = func
        self.calls = 0

    def forward(self, t: float | Tensor, y: Tensor) -> Tensor:
        self.calls += 1
        return self.func(t, y)


class Spiral(nn.Module):
    """The cubic spiral of torchdiffeq's ode_demo, y' = y³ A, with a small tanh MLP added
    (so that func is a network): a 2-D state circling inwards over t in [0, 25]."""

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.register_buffer("a", torch.tensor([[-0.1, 2.0], [-2.0, -0.1]]))
        self.net = MLP(2, 50)
        with torch.no_grad():
            for p in self.net.parameters():
                p.copy_(0.1 * torch.randn(p.shape, generator=generator))

    def forward(self, t: float | Tensor, y: Tensor) -> Tensor:
        return (y ** 3) @ self.a + self.net(t, y)


class VanDerPol(nn.Module):
    """The Van der Pol oscillator, mu = 5: a limit cycle with fast and slow phases."""

    mu = 5.0

    def forward(self, t: float | Tensor, y: Tensor) -> Tensor:
        x, v = y[..., 0], y[..., 1]
        return torch.stack([v, self.mu * (1 - x * x) * v - x], -1)


PROBLEMS: dict[str, tuple[Callable[[], nn.Module], list[float], float]] = {
    "spiral MLP": (Spiral, [2.0, 0.0], 25.0),
    "Van der Pol (mu 5)": (VanDerPol, [2.0, 0.0], 10.0),
}
"""name -> (func factory, y0, t1); every solve starts at t0 = 0."""


def _solve(library: str, func: nn.Module, y0: Tensor, t1: float, rtol: float, atol: float,
           grad: str = "direct") -> Tensor:
    """y(t1) by dopri5 with the integral controller of each library, from t0 = 0."""
    if library == OURS:
        return odeint(func, y0, 0.0, t1, method=Adaptive("dopri5", rtol=rtol, atol=atol), grad=grad)
    t = torch.tensor([0.0, t1], dtype=y0.dtype)
    if library == TORCHDIFFEQ:
        solve = torchdiffeq.odeint_adjoint if grad == "adjoint" else torchdiffeq.odeint
        return solve(func, y0, t, method="dopri5", rtol=rtol, atol=atol)[-1]
    term = torchode.ODETerm(func)
    solver = torchode.AutoDiffAdjoint(torchode.Dopri5(term=term),
                                      torchode.IntegralController(atol=atol, rtol=rtol, term=term))
    batched = y0.reshape(1, -1) if y0.dim() == 1 else y0
    solution = solver.solve(torchode.InitialValueProblem(y0=batched, t_eval=t.expand(batched.shape[0], 2)))
    return solution.ys[:, -1].reshape(y0.shape)


def libraries() -> list[str]:
    """anode_ext and the comparison libraries that are installed."""
    return [OURS] + [name for name, module in ((TORCHDIFFEQ, torchdiffeq), (TORCHODE, torchode)) if module is not None]


def work_precision(rtols: tuple[float, ...]) -> list[dict[str, Any]]:
    """Per problem, rtol (atol = rtol / 1000) and library: func evaluations and the relative
    error of y(t1) against a reference solved at rtol = atol = 1e-12, in float64."""
    rows = []
    for problem, (factory, start, t1) in PROBLEMS.items():
        func = factory().double()
        y0 = torch.tensor(start, dtype=torch.float64)
        with torch.no_grad():
            reference = _solve(OURS, func, y0, t1, 1e-12, 1e-12)
            for rtol in rtols:
                for library in libraries():
                    counting = Counting(func)
                    y = _solve(library, counting, y0, t1, rtol, rtol * 1e-3)
                    error = float((y - reference).abs().max() / reference.abs().max())
                    rows.append({"problem": problem, "rtol": rtol, "library": library, "evaluations": counting.calls,
                                 "relative_error": error})
    return rows


def format_work_precision(rows: list[dict[str, Any]]) -> str:
    """A Markdown table: per problem and rtol, each library's evaluations and error, and
    anode_ext's evaluations over torchdiffeq's."""
    found = list(dict.fromkeys(r["library"] for r in rows))
    header = "| problem | rtol | " + " | ".join(f"{lib} NFE | {lib} error" for lib in found)
    header += " | NFE / torchdiffeq |" if TORCHDIFFEQ in found else " |"
    lines = [header, "|---|---:|" + "---:|---:|" * len(found) + ("---:|" if TORCHDIFFEQ in found else "")]
    for problem in dict.fromkeys(r["problem"] for r in rows):
        for rtol in dict.fromkeys(r["rtol"] for r in rows if r["problem"] == problem):
            by = {r["library"]: r for r in rows if r["problem"] == problem and r["rtol"] == rtol}
            cells = [f"{by[lib]['evaluations']:,} | {by[lib]['relative_error']:.1e}" for lib in found]
            line = f"| {problem} | {rtol:g} | " + " | ".join(cells) + " |"
            if TORCHDIFFEQ in found:
                line += f" {by[OURS]['evaluations'] / by[TORCHDIFFEQ]['evaluations']:.2f} |"
            lines.append(line)
    return "\n".join(lines)


def step_overhead(repeats: int, dim: int = 16, hidden: int = 64, batch: int = 32, t1: float = 10.0,
                  rtol: float = 1e-7, atol: float = 1e-9) -> dict[str, Any]:
    """Microseconds per accepted dopri5 step that each library adds to the bare func
    evaluations, forward+backward, on one CPU thread (the 16-64-16 tanh MLP, batch 32).

    Each library's bare evaluations chain func as many times as its solve calls it, so
    what is left is the solver's bookkeeping, stage arithmetic and error control: the
    median over rounds of the solve's time minus its bare chain's in the same round."""
    with one_thread():
        torch.manual_seed(0)
        func = MLP(dim, hidden)
        x = torch.randn(batch, dim, requires_grad=True)
        found = libraries()
        calls = {}
        for library in found:
            counting = Counting(func)
            with torch.no_grad():
                _solve(library, counting, x, t1, rtol, atol)
            calls[library] = counting.calls
        stats = SolverStats()
        with torch.no_grad():
            odeint(func, x, 0.0, t1, method=Adaptive("dopri5", rtol=rtol, atol=atol), stats=stats)
        # Each library's steps from its evaluations: func at t0, the initial-step probe, then
        # six per step (dopri5 is FSAL). anode_ext's count checks the formula.
        steps = {library: (calls[library] - 2) // 6 for library in found}
        if stats.rejected or steps[OURS] != stats.accepted:
            raise RuntimeError(f"step_overhead expects a solve without rejected steps, got {stats}")

        def solve(library: str) -> None:
            _solve(library, func, x, t1, rtol, atol).sum().backward()

        variants: dict[str, Callable[[], None]] = {}
        for library in found:
            variants[library] = lambda library=library: solve(library)
            variants[f"bare {library}"] = lambda n=calls[library]: bare_evaluations(func, x, n)
        timings = compare_timings(variants, "cpu", warmup=2, repeats=repeats)
    samples = {name: list(t.samples) for name, t in timings.items()}
    overhead = {lib: median_paired_difference(samples, lib, f"bare {lib}") / steps[lib] * 1e6 for lib in found}
    result: dict[str, Any] = {
        "dim": dim, "hidden": hidden, "batch": batch, "t1": t1, "rtol": rtol, "atol": atol,
        "steps": steps, "evaluations": calls, "overhead_us_per_step": overhead,
        "timings": {name: t.summary() for name, t in timings.items()},
    }
    for library in found[1:]:
        result[f"overhead_over_{library}"] = overhead[OURS] / overhead[library] if overhead[library] > 0 else None
    return result


def format_step_overhead(result: dict[str, Any]) -> str:
    lines = [
        f"dopri5, {result['dim']}-{result['hidden']}-{result['dim']} tanh MLP, batch {result['batch']}, t in "
        f"[0, {result['t1']:g}], rtol {result['rtol']:g}, atol {result['atol']:g}; forward+backward, one thread; "
        "steps from the evaluations (2 + 6 per step; anode_ext rejects none here)",
        "",
        "| library | func evaluations | steps | solve ms | bare evaluations ms | overhead µs / step | anode_ext / this |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    ours = result["overhead_us_per_step"][OURS]
    for library, value in result["overhead_us_per_step"].items():
        ratio = ours / value if value > 0 else float("nan")
        timings = result["timings"]
        lines.append(f"| {library} | {result['evaluations'][library]:,} | {result['steps'][library]} "
                     f"| {time_cell(timings[library])} | {time_cell(timings['bare ' + library])} | {value:,.0f} "
                     f"| {ratio:.2f} |")
    return "\n".join(lines) + noisy_footnote(result["timings"].values())


def gradient_modes(repeats: int, dim: int = 16, hidden: int = 64, batch: int = 32, t1: float = 4.0,
                   rtol: float = 1e-5, atol: float = 1e-7) -> list[dict[str, Any]]:
    """One adaptive dopri5 solve of the MLP in each gradient mode, and torchdiffeq's odeint
    and odeint_adjoint: training-step time over direct's (float32, interleaved rounds),
    peak bytes saved for backward (parameters excluded) and the gradient's relative error
    against direct's, the exact gradient of the discrete solve (float64)."""
    torch.manual_seed(0)
    func = MLP(dim, hidden)
    x = torch.randn(batch, dim, requires_grad=True)
    variants = {"direct": (OURS, "direct"), "anode": (OURS, "anode"), "revolve": (OURS, Revolve()),
                "adjoint": (OURS, "adjoint")}
    if torchdiffeq is not None:
        variants.update({"torchdiffeq odeint": (TORCHDIFFEQ, "direct"),
                         "torchdiffeq odeint_adjoint": (TORCHDIFFEQ, "adjoint")})

    def train_step(func: nn.Module, x: Tensor, library: str, grad: object) -> list[Tensor]:
        func.zero_grad(set_to_none=True)
        x.grad = None
        _solve(library, func, x, t1, rtol, atol, grad).square().sum().backward()
        return [x.grad, *(p.grad for p in func.parameters())]

    timings = compare_timings({name: (lambda v=v: train_step(func, x, *v)) for name, v in variants.items()}, "cpu",
                              warmup=1, repeats=repeats)
    exact_func, exact_x = func.double(), x.detach().double().requires_grad_()
    reference = torch.cat([g.flatten() for g in train_step(exact_func, exact_x, OURS, "direct")])
    errors = {}
    for name, variant in variants.items():
        grads = torch.cat([g.flatten() for g in train_step(exact_func, exact_x, *variant)])
        errors[name] = float((grads - reference).abs().max() / reference.abs().max())
    func.float()
    rows = []
    for name, (library, grad) in variants.items():
        with count_saved_bytes(exclude=list(func.parameters())) as counter:
            loss = _solve(library, func, x, t1, rtol, atol, grad).square().sum()
            held = counter.total
            loss.backward()
        rows.append({"variant": name, "seconds": timings[name].median, "timing": timings[name].summary(),
                     "time_over_direct": timings[name].median / timings["direct"].median,
                     "saved_bytes_after_forward": held, "peak_saved_bytes": counter.peak,
                     "relative_gradient_error": errors[name]})
    return rows


def format_gradient_modes(rows: list[dict[str, Any]]) -> str:
    lines = ["| variant | ms / training step | / direct | KiB saved after forward | peak KiB | "
             "gradient error vs exact discrete |", "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {time_cell(r['timing'])} | {r['time_over_direct']:.2f} "
                     f"| {r['saved_bytes_after_forward'] / 1024:,.1f} | {r['peak_saved_bytes'] / 1024:,.1f} "
                     f"| {r['relative_gradient_error']:.1e} |")
    return "\n".join(lines) + noisy_footnote(r["timing"] for r in rows)
