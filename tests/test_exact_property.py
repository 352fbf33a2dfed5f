"""Property: for funcs drawn from a grammar of the ways user code reaches tensors, anode
and revolve give direct's gradients (input, parameters, integration time) to 1e-10 in
float64, fire every hook as often, and leave every buffer as direct leaves it."""

import os

import pytest
import torch
from torch import nn

from anode_ext import TABLEAUX, odeint
from anode_ext.modes import grad_mode_named

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

# CI draws more examples than a local run.
EXAMPLES = 150 if os.environ.get("CI") else 25
WIDTH = 3


class Counter(nn.Module):
    """Reads and advances its own buffer on every call (a power-iteration-like state)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("u", torch.ones(WIDTH, dtype=torch.float64))

    def forward(self, y):
        with torch.no_grad():
            self.u.mul_(0.9).add_(0.05)
        return y * self.u.clone()


class Drawn:
    """One func of the grammar with everything it touches, built deterministically."""

    def __init__(self, features, seed):
        torch.manual_seed(seed)
        self.features = features
        self.x = torch.randn(4, WIDTH, dtype=torch.float64, requires_grad=True)
        self.w = torch.randn(WIDTH, WIDTH, dtype=torch.float64, requires_grad=True)
        self.layers = nn.ModuleList(nn.Linear(WIDTH, WIDTH) for _ in range(3)).double()
        self.norm = nn.BatchNorm1d(WIDTH).double()
        self.counter = Counter()
        self.dropout = nn.Dropout(0.3)
        self.t1 = torch.tensor(0.9, dtype=torch.float64, requires_grad="time" in features)
        self.hook_calls = 0
        if "hook" in features:
            self.layers[0].weight.register_hook(self._hook)

    def _hook(self, g):
        self.hook_calls += 1
        return 0.5 * g

    def func(self, t, y):
        f = self.features
        time = t.item() if isinstance(t, torch.Tensor) else t
        layer = self.layers[min(int(3 * time), 2)] if "by_time" in f else self.layers[0]
        h = layer(y)
        if "norm" in f:
            h = self.norm(h)
        if "counter" in f:
            h = self.counter(h)
        h = torch.tanh(h)
        if "dropout" in f:
            h = self.dropout(h)
        if "captured_state" in f:
            h = h + 0.5 * self.x
        if "context" in f:
            h = h * self.context
        if "time" in f:
            h = h * (1 + t)
        return h

    def run(self, method, steps, grad, checkpoints):
        torch.manual_seed(1)
        self.context = torch.sin(self.x @ self.w)
        y0 = self.x * 1.5
        out = odeint(self.func, y0, 0.0, self.t1, steps=steps, method=method, grad=grad_mode_named(grad, checkpoints=checkpoints))
        loss = out.square().sum()
        if "shared" in self.features:
            loss = loss + self.layers[0](self.x).sum()
        loss.backward()
        tensors = [self.x, self.w, self.t1, *self.layers.parameters(), *self.norm.parameters()]
        grads = [None if t.grad is None else t.grad.clone() for t in tensors]
        buffers = [b.clone() for b in (*self.norm.buffers(), *self.counter.buffers())]
        return grads, buffers, self.hook_calls


FEATURES = ["by_time", "norm", "counter", "dropout", "captured_state", "context", "time", "shared", "hook"]


@settings(max_examples=EXAMPLES, deadline=None)
@given(
    features=st.sets(st.sampled_from(FEATURES)),
    method=st.sampled_from(sorted(TABLEAUX)),
    steps=st.integers(1, 6),
    mode=st.sampled_from([("anode", None), ("revolve", 1), ("revolve", 2), ("revolve", 3)]),
    seed=st.integers(0, 2**16),
)
def test_exact_modes_equal_direct(features, method, steps, mode, seed):
    grad, checkpoints = mode
    expected = Drawn(features, seed).run(method, steps, "direct", None)
    got = Drawn(features, seed).run(method, steps, grad, checkpoints)
    (g_grads, g_buffers, g_calls), (e_grads, e_buffers, e_calls) = got, expected
    assert g_calls == e_calls
    for i, (g, e) in enumerate(zip(g_grads, e_grads)):
        assert (g is None) == (e is None), f"gradient {i}: present in one mode only"
        if e is not None:
            scale = max(e.abs().max().item(), 1e-300)
            assert (g - e).abs().max().item() <= 1e-10 * scale, f"gradient {i} differs"
    for g, e in zip(g_buffers, e_buffers):
        torch.testing.assert_close(g, e, rtol=0, atol=0)
