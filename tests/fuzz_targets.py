"""Fuzz targets for every public entry point, run by tests/test_fuzz.py in a subprocess
(a crash there is a failure, not a lost test run). Not collected by the main suite.

Each drawn call must either return the right value (against a plain PyTorch reference
where one exists) or raise TypeError, ValueError or RuntimeError with a message that
names what was wrong. ANODE_EXT_FUZZ_EXAMPLES sets the examples per target;
ANODE_EXT_FUZZ_REPORT names a file that gets one line per case tried.
"""

import math
import os
import re
import sys

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, os.path.dirname(__file__))
from rda_reference import rda_reference  # noqa: E402

import anode_ext  # noqa: E402
from anode_ext import TABLEAUX, Tableau, models, odeint, rda_rhs, rda_rk_step, rk_combine  # noqa: E402
from anode_ext.modes import grad_mode_named  # noqa: E402

EXAMPLES = int(os.environ.get("ANODE_EXT_FUZZ_EXAMPLES", "50"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=False)
FLOATS = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
OTHER_DTYPES = [torch.int64, torch.complex64, torch.bool]
ERRORS = (TypeError, ValueError, RuntimeError, NotImplementedError)


def tried(target: str) -> None:
    path = os.environ.get("ANODE_EXT_FUZZ_REPORT")
    if path:
        with open(path, "a") as f:
            f.write(target + "\n")


def expect_error(call, *names):
    """call() must raise one of ERRORS whose message mentions one of `names`."""
    with pytest.raises(ERRORS) as info:
        call()
    message = str(info.value)
    assert any(re.search(n, message, re.IGNORECASE) for n in names), f"message names none of {names}: {message}"


def special_values(draw, shape, dtype):
    """A tensor of `shape` whose entries mix ordinary values, zeros, subnormals, huge
    values (safe from overflow in float32 accumulation), NaN and infinities."""
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    t = torch.randn(shape, generator=g, dtype=torch.float64)
    if t.numel() and draw(st.booleans()):
        info = torch.finfo(dtype)
        picks = [0.0, -0.0, info.tiny / 2, min(info.max, 1e30) / 1024, math.nan, math.inf, -math.inf]
        flat = t.view(-1)
        for _ in range(draw(st.integers(1, 3))):
            flat[draw(st.integers(0, flat.numel() - 1))] = draw(st.sampled_from(picks))
    return t.to(dtype)


def layout_of(draw, t):
    """t itself, or a non-contiguous view holding the same values."""
    kind = draw(st.sampled_from(["contiguous", "transposed", "strided"]))
    if kind == "transposed" and t.dim() >= 2:
        return t.transpose(0, 1).contiguous().transpose(0, 1)
    if kind == "strided":
        buf = torch.empty(t.numel() * 2, dtype=t.dtype)
        view = buf[::2].view(t.shape) if t.numel() else t
        view.copy_(t)
        return view
    return t


@st.composite
def combine_case(draw):
    shape = tuple(draw(st.lists(st.integers(0, 5), max_size=4)))
    dtype = draw(st.sampled_from(FLOATS + OTHER_DTYPES if draw(st.integers(0, 9)) == 0 else FLOATS))
    n = draw(st.integers(0, 20))
    base = dtype if dtype in FLOATS else torch.float32
    y = layout_of(draw, special_values(draw, shape, base).to(dtype))
    ks = [layout_of(draw, special_values(draw, shape, base).to(dtype)) for _ in range(n)]
    weights = [draw(st.floats(-4, 4, allow_nan=False)) for _ in range(n + draw(st.sampled_from([0, 0, 0, 1, -1])))]
    h = draw(st.sampled_from([0.0, 0.1, -0.3, 1.0, math.nan, math.inf]))
    out = draw(st.sampled_from([None, None, "fresh", "y", "k", "wrong_shape", "wrong_dtype"]))
    return y, ks, weights, h, out


@FUZZ
@given(combine_case())
def test_rk_combine(case):
    tried("rk_combine")
    y, ks, weights, h, out_kind = case
    valid_dtype = y.dtype in FLOATS
    out = None
    if out_kind == "fresh":
        out = torch.empty_like(y)
    elif out_kind == "y":
        out = y
    elif out_kind == "k" and ks:
        out = ks[-1]
    elif out_kind == "wrong_shape":
        out = torch.empty(y.numel() + 1, dtype=y.dtype)
    elif out_kind == "wrong_dtype":
        out = torch.empty_like(y, dtype=torch.float64 if y.dtype != torch.float64 else torch.float32)
    call = lambda: rk_combine(y, ks, weights, h, out=out)  # noqa: E731
    problem = None
    if not valid_dtype:
        problem = "dtype"
    elif not ks:
        problem = "ks"
    elif len(weights) != len(ks):
        problem = "weights"
    elif out_kind in ("wrong_shape", "wrong_dtype"):
        problem = "out"
    if problem is not None:
        expect_error(call, problem)
        return
    # The reference in float64, in the kernel's order: acc = y, then acc += (h * w) * k.
    acc = y.double()
    for w, k in zip(weights, ks):
        acc = acc + (h * w) * k.double()
    magnitude = y.double().abs()
    for w, k in zip(weights, ks):
        magnitude = magnitude + abs(h * w) * k.double().abs()
    result = call()
    assert result.shape == y.shape and result.dtype == y.dtype
    got = result.double()
    finite = acc.isfinite() & magnitude.isfinite()
    eps = torch.finfo(y.dtype).eps
    bound = (len(ks) + 2) * eps * magnitude + torch.finfo(y.dtype).tiny
    overflow = acc.abs() >= torch.finfo(y.dtype).max
    close = ((got - acc).abs() <= bound) | overflow
    assert bool(close[finite].all()), "a finite result is off by more than rounding"
    assert bool((~got[~finite].isfinite()).all() | ~acc[~finite].isnan().any()), "a non-finite sum came out finite"


@st.composite
def rda_case(draw):
    dims = draw(st.integers(1, 5))
    shape = tuple(draw(st.integers(0, 8)) for _ in range(dims))
    dtype = draw(st.sampled_from(FLOATS + [torch.int64]))
    cout = shape[0] if shape else 1
    coefficient_shape = draw(st.sampled_from([(4, cout), (4, cout), (4, cout + 1), (3, cout), (4,)]))
    reaction = draw(st.sampled_from(["tanh", "relu", "none", "sigmoid"]))
    method = draw(st.sampled_from([*TABLEAUX, "nine"]))
    base = dtype if dtype in FLOATS else torch.float32
    theta = special_values(draw, shape, base).to(dtype)
    coefficients = (special_values(draw, coefficient_shape, base) * 0.3).to(dtype)
    return theta, coefficients, reaction, method


@FUZZ
@given(rda_case())
def test_rda_ops(case):
    tried("rda")
    theta, coefficients, reaction, method = case
    tableau = TABLEAUX.get(method) or Tableau([[0.0] * i for i in range(9)], [1 / 9] * 9)
    calls = [lambda: rda_rhs(theta, coefficients, reaction), lambda: rda_rk_step(theta, coefficients, tableau, 0.1, reaction)]
    taps = math.prod(theta.shape[2:]) if theta.dim() >= 3 else 1
    cout = theta.shape[0] if theta.dim() else 0
    problem = None
    if reaction == "sigmoid":
        problem = "reaction"
    elif theta.dtype not in FLOATS:
        problem = "dtype"
    elif theta.dim() not in (2, 3, 4):
        problem = "theta has shape"
    elif taps > 49:
        problem = "taps per filter"
    elif tuple(coefficients.shape) != (4, cout):
        problem = "coefficients have shape"
    if problem is not None:
        for c in calls:
            expect_error(c, problem)
        return
    if method == "nine":
        expect_error(calls[1], "stages")
        calls = calls[:1]
    got = rda_rhs(theta, coefficients, reaction).double()
    assert got.shape == theta.shape
    if not theta.numel():
        return
    expected = rda_reference(theta.double(), coefficients.double(), reaction)
    finite = expected.isfinite() & got.isfinite()
    assert bool((got.isfinite() == expected.isfinite()).all() or theta.dtype != torch.float64)
    if theta.dtype in (torch.float32, torch.float64):
        # Rounding of a few terms, each bounded by the largest finite theta and coefficient.
        size = theta.double().nan_to_num(0, 0, 0).abs().max().clamp(min=1)
        weight = coefficients.double().nan_to_num(0, 0, 0).abs().max().clamp(min=1)
        tol = 16 * torch.finfo(theta.dtype).eps * 16 * size * weight
        assert bool(((got - expected).abs()[finite] <= tol).all())
    if len(calls) > 1:
        out = calls[1]()
        assert len(out) == tableau.stages and all(o.shape == theta.shape for o in out)


FUNCS = {
    "ok": lambda t, y: -y,
    "shape": lambda t, y: y.reshape(-1)[:1],
    "list": lambda t, y: [y],
    "int": lambda t, y: y.long(),
    "none": lambda t, y: None,
}
ODE_ERRORS = {"shape": "shape", "list": "tensor", "int": "dtype|floating", "none": "tensor"}


@st.composite
def odeint_case(draw):
    func = draw(st.sampled_from(list(FUNCS)))
    y0 = draw(st.sampled_from(["float", "float", "int", "complex", "list", "none", "scalar", "empty"]))
    t0 = draw(st.sampled_from([0.0, 0.0, 1, -2.5, math.nan, math.inf, "0", True, "tensor", "grad_tensor", "vector"]))
    t1 = draw(st.sampled_from([1.0, 1.0, 0.5, math.nan, -math.inf, "tensor"]))
    steps = draw(st.sampled_from([1, 3, 0, -1, 2.5, True, "3", None]))
    method = draw(st.sampled_from(["euler", "rk4", "midpoint", "bogus", None, "table"]))
    grad = draw(st.sampled_from(["direct", "anode", "revolve", "adjoint", "bogus"]))
    checkpoints = draw(st.sampled_from([None, None, 1, 2, 0, "x"]))
    return func, y0, t0, t1, steps, method, grad, checkpoints


def time_value(v):
    if v == "tensor":
        return torch.tensor(0.25, dtype=torch.float64)
    if v == "grad_tensor":
        return torch.tensor(0.25, dtype=torch.float64, requires_grad=True)
    if v == "vector":
        return torch.zeros(3)
    return v


@FUZZ
@given(odeint_case())
def test_odeint(case):
    tried("odeint")
    func, y0_kind, t0, t1, steps, method, grad, checkpoints = case
    y0 = {
        "float": torch.randn(3, 2, dtype=torch.float64, requires_grad=True),
        "int": torch.ones(3, dtype=torch.int64),
        "complex": torch.ones(3, dtype=torch.complex64),
        "list": [1.0, 2.0],
        "none": None,
        "scalar": torch.tensor(1.5, dtype=torch.float64, requires_grad=True),
        "empty": torch.zeros(0, 2, dtype=torch.float64, requires_grad=True),
    }[y0_kind]
    method_value = Tableau([[], [0.5]], [0.0, 1.0]) if method == "table" else method
    kwargs = dict(steps=steps, method=method_value)

    def call():
        # A mode with options is made inside the call: its checks are what is fuzzed too.
        mode = grad if checkpoints is None else grad_mode_named(grad, checkpoints=checkpoints)
        return odeint(FUNCS[func], y0, time_value(t0), time_value(t1), grad=mode, **kwargs)

    problems = []
    if y0_kind in ("list", "none"):
        problems.append("y0")
    if y0_kind in ("int", "complex"):
        problems.append("y0 has dtype")
    if isinstance(t0, float) and not math.isfinite(t0) or t0 is True or t0 in ("0", "vector"):
        problems.append("t0")
    if isinstance(t1, float) and not math.isfinite(t1):
        problems.append("t1")
    # None is the default (one step); anything else must be an integer >= 1.
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        problems.append("steps")
    if method not in ("euler", "rk4", "midpoint", "table"):
        problems.append("method|tableau")
    if grad == "bogus":
        problems.append("grad")
    if checkpoints is not None and grad not in ("revolve", "bogus"):
        problems.append("checkpoints")
    if checkpoints in (0, "x") and grad == "revolve":
        problems.append("checkpoints")
    if t0 == "grad_tensor" and grad == "adjoint":
        problems.append("t0 or t1")
    if problems:
        expect_error(call, *problems)
        return
    if func != "ok":
        expect_error(call, ODE_ERRORS[func])
        return
    out = call()
    assert out.shape == y0.shape
    expected = odeint(FUNCS[func], y0, time_value(t0), time_value(t1), grad="direct", **kwargs)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    if out.numel():
        (g,) = torch.autograd.grad(out.sum(), y0)
        (e,) = torch.autograd.grad(expected.sum(), y0)
        tol = 1e-12 if grad != "adjoint" else 1e-1
        torch.testing.assert_close(g, e, rtol=tol, atol=tol)


ROW = st.one_of(st.lists(st.floats(-2, 2, allow_nan=False), max_size=4),
                st.lists(st.sampled_from([math.nan, math.inf, "x", None]), min_size=1, max_size=2))


@FUZZ
@given(st.lists(ROW, min_size=0, max_size=4), st.lists(st.one_of(st.floats(-1, 1), st.just("b")), max_size=4),
       st.one_of(st.none(), st.lists(st.floats(0, 1), max_size=4)))
def test_tableau(a, b, c):
    tried("tableau")
    try:
        tableau = Tableau(a, b, c)
    except (ValueError, TypeError) as error:
        assert "Butcher tableau" in str(error), str(error)
        return
    assert tableau.stages == len(b) >= 1
    y = odeint(lambda t, y: -y, torch.ones(2, dtype=torch.float64), steps=2, method=tableau, grad="direct")
    assert y.shape == (2,)


@FUZZ
@given(st.sampled_from(["resnet", "sqnxt", "resnet_baseline", "vgg"]), st.sampled_from([0.0625, 0.125, 0, -1, "x"]),
       st.sampled_from([1, 2, 0, "2"]), st.sampled_from(["euler", "midpoint", "bogus"]),
       st.sampled_from(["anode", "direct", "revolve", "bogus"]), st.sampled_from(["none", "all", "first", [1, 2], [9], "x"]),
       st.sampled_from([10, 1, 2.5]))
def test_models_create(name, width, steps, method, grad, coupled, num_classes):
    tried("models.create")
    try:
        model = models.create(name, width=width, steps=steps, method=method, grad=grad, coupled=coupled,
                              num_classes=num_classes)
    except (ValueError, TypeError) as error:
        assert str(error), "an error without a message"
        return
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, num_classes) and bool(out.isfinite().all())


TRAIN_VOCABULARY = {
    "--model": ["sqnxt", "resnet", "vgg", ""], "--width": ["0.0625", "0", "-1", "x"], "--method": ["euler", "bogus"],
    "--steps": ["1", "0", "x"], "--grad": ["anode", "bogus"], "--checkpoints": ["1", "0"], "--memory-budget": ["1000000", "-1", "0"],
    "--coupled": ["none", "all", "1,2", "x", "9"], "--epochs": ["1", "0", "x"], "--batch-size": ["8", "0"],
    "--lr": ["0.1", "-1", "nan", "inf", "x"], "--momentum": ["0.9", "nan", "-1"], "--skip-nonfinite": ["0", "2", "-1"],
    "--dataset": ["synthetic", "mnist"],
    "--seed": ["0", "x"], "--device": ["cpu", "tpu"], "--bogus-flag": ["1"],
}


@FUZZ
@given(st.dictionaries(st.sampled_from(list(TRAIN_VOCABULARY)), st.integers(0, 4), max_size=5))
def test_train_cli(choices):
    tried("anode-train")
    import tempfile

    from anode_ext.training import cli, loop

    argv = ["--dataset", "synthetic", "--no-progress", "--device", "cpu"]
    for flag, i in choices.items():
        values = TRAIN_VOCABULARY[flag]
        argv += [flag, values[i % len(values)]]
    with tempfile.TemporaryDirectory() as out:
        argv += ["--out", os.path.join(out, "run")]
        original = loop.Trainer.run
        loop.Trainer.run = lambda self: "finished"  # arguments only: no training
        try:
            code = cli.main(argv)
            assert code == 0
        except SystemExit as stop:
            assert stop.code not in (0, None), "a failed run exited with status 0"
            assert stop.code == 2 or str(stop.code).startswith("anode-train:"), str(stop.code)
        finally:
            loop.Trainer.run = original


BENCH_VOCABULARY = {
    "--sections": ["ops", "bogus", "", "ops,models"], "--device": ["cpu", "cuda", "tpu"], "--quick": [None],
    "--full": [None], "--out": ["/dev/null/x"],
}


@FUZZ
@given(st.dictionaries(st.sampled_from(list(BENCH_VOCABULARY)), st.integers(0, 3), max_size=3))
def test_bench_cli(choices):
    tried("anode-bench")
    import tempfile

    from anode_ext.bench import cli

    with tempfile.TemporaryDirectory() as out:
        argv = ["--out", out]
        for flag, i in choices.items():
            values = BENCH_VOCABULARY[flag]
            value = values[i % len(values)]
            argv += [flag] if value is None else [flag, value]
        stubs = {name: (lambda args, p: ({}, "stub", "stub")) for name in cli.SECTIONS}
        original = dict(cli.SECTIONS)
        cli.SECTIONS.update(stubs)
        try:
            code = cli.main(argv)
            assert code in (0, 2)
        except SystemExit as stop:
            assert stop.code == 2
        finally:
            cli.SECTIONS.update(original)


def test_errors_of_func_propagate():
    tried("odeint")

    def func(t, y):
        raise KeyError("from func")

    for grad in ("direct", "anode", "revolve", "adjoint"):
        with pytest.raises(KeyError, match="from func"):
            odeint(func, torch.ones(2, requires_grad=True), steps=2, grad=grad)


def test_version_and_build_info():
    tried("build_info")
    info = anode_ext.build_info()
    assert info["version"] == anode_ext.__version__
