"""ANODEv2 coupled blocks: equivalences, exact gradients in every mode, semantics, errors."""

import pytest
import torch
import torch.nn.functional as F
from odefuncs import ConvBNFunc
from testing import relative_error
from torch import nn

from anode_ext import RDA, TABLEAUX, CoupledODEBlock, ODEBlock, Tableau, evolving_weights
from anode_ext.bench.memory import count_saved_bytes
from anode_ext.modes import grad_mode_named


class Zero(nn.Module):
    def forward(self, t, thetas):
        return tuple(torch.zeros_like(th) for th in thetas)


class GenericRDA(nn.Module):
    """The RDA dynamics evaluated stage by stage through the generic solver path."""

    def __init__(self, rda):
        super().__init__()
        self.rda = rda

    def forward(self, t, thetas):
        return self.rda(t, thetas)


def make_block(q="rda", grad="direct", method="rk4", steps=3, checkpoints=None, seed=0, coefficient_scale=0.3):
    torch.manual_seed(seed)
    block = CoupledODEBlock(ConvBNFunc(3), q=q, steps=steps, method=method, grad=grad_mode_named(grad, checkpoints=checkpoints)).double()
    if isinstance(block.q, RDA):
        with torch.no_grad():
            for c in block.q.coefficients:
                c.copy_(torch.randn(c.shape, generator=torch.Generator().manual_seed(seed + 1), dtype=c.dtype) * coefficient_scale)
    return block


def input_for(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 3, 5, 5, generator=g, dtype=torch.float64).requires_grad_(True)


def gradients(module, x):
    for p in module.parameters():
        p.grad = None
    x.grad = None
    y = module(x)
    (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view(y.shape)).sum().backward()
    return y.detach(), [x.grad.clone()] + [p.grad.clone() for p in module.parameters() if p.grad is not None]


def test_default_evolving_weights():
    assert evolving_weights(ConvBNFunc(3)) == ["net.0.weight", "net.4.weight"]
    mlp = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 4))
    assert evolving_weights(mlp) == ["0.weight", "2.weight"]


@pytest.mark.parametrize("grad", ["direct", "anode", "revolve"])
def test_q_none_is_the_uncoupled_block(grad):
    torch.manual_seed(0)
    func = ConvBNFunc(3).double()
    x = input_for()
    coupled = CoupledODEBlock(func, q="none", steps=2, grad=grad)
    plain = ODEBlock(func, steps=2, grad=grad)
    y1, g1 = gradients(coupled, x)
    y2, g2 = gradients(plain, x)
    torch.testing.assert_close(y1, y2, rtol=0, atol=0)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_zero_dynamics_through_the_coupled_machinery_equal_the_uncoupled_block():
    torch.manual_seed(0)
    func = ConvBNFunc(3).double()
    x = input_for()
    y1, g1 = gradients(CoupledODEBlock(func, q=Zero(), steps=2), x)
    y2, g2 = gradients(ODEBlock(func, steps=2), x)
    torch.testing.assert_close(y1, y2, rtol=1e-14, atol=1e-14)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_rda_changes_the_block():
    y_rda, _ = gradients(make_block(), input_for())
    y_none, _ = gradients(make_block(q="none"), input_for())
    assert (y_rda - y_none).abs().max() > 1e-3


@pytest.mark.parametrize("method", sorted(TABLEAUX))
def test_fused_step_equals_generic_path(method):
    fused = make_block(method=method)
    generic = make_block(method=method)
    generic.q = GenericRDA(generic.q)
    y1, g1 = gradients(fused, input_for())
    y2, g2 = gradients(generic, input_for())
    torch.testing.assert_close(y1, y2, rtol=1e-13, atol=1e-13)
    assert len(g1) == len(g2)
    for a, b in zip(g1, g2):
        assert relative_error(a, b) < 1e-12


@pytest.mark.parametrize("grad, checkpoints", [("anode", None), ("revolve", 1), ("revolve", 2)])
@pytest.mark.parametrize("steps", [1, 2, 3, 5])
@pytest.mark.parametrize("method", sorted(TABLEAUX))
def test_exact_gradients(method, steps, grad, checkpoints):
    _, expected = gradients(make_block(method=method, steps=steps), input_for())
    _, got = gradients(make_block(method=method, steps=steps, grad=grad_mode_named(grad, checkpoints=checkpoints)), input_for())
    assert len(got) == len(expected)
    for i, (a, b) in enumerate(zip(got, expected)):
        assert b.abs().max() > 0
        assert relative_error(a, b) <= 1e-10, f"gradient {i}"


def test_theta0_and_coefficients_get_gradients():
    block = make_block(grad="anode")
    gradients(block, input_for())
    for name in block.weight_names:
        assert dict(block.func.named_parameters())[name].grad.abs().max() > 0
    for c in block.q.coefficients:
        assert c.grad.abs().max() > 0


def test_anode_saves_only_the_block_input():
    block = make_block(grad="anode", steps=4)
    x = input_for()
    with count_saved_bytes(exclude=block.parameters()) as counter:
        y = block(x)
    assert counter.total == x.numel() * x.element_size()
    y.sum().backward()


@pytest.mark.parametrize("grad, checkpoints", [("anode", None), ("revolve", 1)])
def test_batchnorm_statistics_once_per_step(grad, checkpoints):
    reference = make_block()
    block = make_block(grad=grad_mode_named(grad, checkpoints=checkpoints))
    for seed in range(3):
        gradients(reference, input_for(seed))
        gradients(block, input_for(seed))
    for a, b in zip(block.buffers(), reference.buffers()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=0)


def test_errors():
    with pytest.raises(ValueError, match=r"weights \['net.9.weight'\] are not parameters of func"):
        CoupledODEBlock(ConvBNFunc(3), weights=["net.9.weight"])
    with pytest.raises(ValueError, match="q must be 'rda', 'none' or an nn.Module"):
        CoupledODEBlock(ConvBNFunc(3), q="diffusion")
    with pytest.raises(TypeError, match="func must be an nn.Module"):
        CoupledODEBlock(lambda t, x: x)
    with pytest.raises(ValueError, match=r"RDA dynamics take convolution or linear weights; got a weight of shape \(3,\)"):
        CoupledODEBlock(ConvBNFunc(3), weights=["net.1.weight"])
    with pytest.raises(ValueError, match="unknown reaction"):
        CoupledODEBlock(ConvBNFunc(3), reaction="sigmoid")
    with pytest.raises(ValueError, match="unknown reaction 'sigmoid'"):
        CoupledODEBlock(ConvBNFunc(3), q="none", reaction="sigmoid")
    with pytest.raises(TypeError, match=r"weights must be a list of parameter names, got the string 'net.0.weight'"):
        CoupledODEBlock(ConvBNFunc(3), weights="net.0.weight")
    with pytest.raises(ValueError, match=r"weights names \['net.0.weight'\] more than once"):
        CoupledODEBlock(ConvBNFunc(3), weights=["net.0.weight", "net.0.weight"])
    block = make_block()
    with torch.no_grad():
        block.q.coefficients[0][1, 0] = float("nan")
    # Not an error (a check would synchronize the GPU on every step): it shows in the output.
    assert not block(input_for()).isfinite().all()


def test_repr():
    text = repr(make_block(grad=grad_mode_named("revolve", checkpoints=2)))
    assert "steps=3, method=rk4, grad=Revolve(checkpoints=2), q=RDA, evolving=2" in text


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.l1, self.l2 = nn.Linear(4, 4), nn.Linear(4, 4)
        self.l2.weight = self.l1.weight

    def forward(self, t, x):
        return self.l2(torch.tanh(self.l1(x)))


def rk4_coupled(joint, x, thetas, steps):
    """The coupled solve written plainly: RK4 on (z, thetas), joint(t, z, thetas) giving
    (dz/dt, dthetas/dt), the weights stepped like the state."""
    h = 1.0 / steps
    z, thetas = x, tuple(thetas)
    for n in range(steps):
        t = n * h
        k1 = joint(t, z, thetas)
        k2 = joint(t + h / 2, z + h / 2 * k1[0], tuple(a + h / 2 * b for a, b in zip(thetas, k1[1])))
        k3 = joint(t + h / 2, z + h / 2 * k2[0], tuple(a + h / 2 * b for a, b in zip(thetas, k2[1])))
        k4 = joint(t + h, z + h * k3[0], tuple(a + h * b for a, b in zip(thetas, k3[1])))
        z = z + h / 6 * (k1[0] + 2 * k2[0] + 2 * k3[0] + k4[0])
        thetas = tuple(a + h / 6 * (b1 + 2 * b2 + 2 * b3 + b4)
                       for a, b1, b2, b3, b4 in zip(thetas, k1[1], k2[1], k3[1], k4[1]))
    return z


def rk4_with_functional_call(func, q, names, x, params, steps):
    """rk4_coupled through torch.func.functional_call (which replaces a tied weight
    everywhere) at every stage."""

    def joint(t, z, thetas):
        dz = torch.func.functional_call(func, dict(zip(names, thetas)), (t, z), tie_weights=True)
        return dz, q(t, thetas)

    return rk4_coupled(joint, x, params, steps)


@pytest.mark.parametrize("grad", ["direct", "anode", "revolve"])
def test_tied_weights_evolve_once_and_everywhere(grad):
    """A weight tied between two layers evolves once and both layers use the evolved
    weight: outputs and gradients equal a plain solve through functional_call."""
    assert evolving_weights(Tied()) == ["l1.weight"]
    torch.manual_seed(0)
    block = CoupledODEBlock(Tied(), steps=2, grad=grad).double()
    with torch.no_grad():
        block.q.coefficients[0].copy_(torch.tensor([[0.0], [0.0], [0.0], [0.7]]).expand(4, 4))
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    y = block(x)
    got = torch.autograd.grad((y * y).sum(), [x, *block.parameters()])
    params = dict(block.func.named_parameters())
    expected_y = rk4_with_functional_call(block.func, block.q, block.weight_names, x,
                                          [params[n] for n in block.weight_names], steps=2)
    expected = torch.autograd.grad((expected_y * expected_y).sum(), [x, *block.parameters()])
    torch.testing.assert_close(y, expected_y, rtol=1e-12, atol=1e-12)
    for a, b in zip(got, expected, strict=True):
        assert b.abs().max() > 0
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert block.func.l2.weight is block.func.l1.weight and isinstance(block.func.l1.weight, nn.Parameter)


@pytest.mark.parametrize("grad", ["anode", "revolve"])
def test_tableau_of_more_stages_than_the_fused_step_takes(grad):
    # Ten stages: the weights are then stepped through q (rda_rhs) like the state.
    n = 10
    tableau = Tableau([[1.0 / (i + 1)] * i for i in range(n)], [1.0 / n] * n)
    expected, got = (gradients(make_block(grad=g, method=tableau, steps=2), input_for()) for g in ("direct", grad))
    for a, b in zip(got[1], expected[1]):
        assert b.abs().max() > 0
        assert relative_error(a, b) < 1e-10


def test_a_func_that_raises_leaves_its_parameters_in_place():
    class Failing(Tied):
        def forward(self, t, x):
            raise ValueError("func failed")

    block = CoupledODEBlock(Failing(), steps=1)
    weight = block.func.l1.weight
    with pytest.raises(ValueError, match="func failed"):
        block(torch.randn(2, 4))
    assert block.func.l1.weight is weight and block.func.l2.weight is weight
    assert dict(block.func.named_parameters())["l1.weight"] is weight


@pytest.mark.parametrize("grad", ["direct", "anode", "revolve"])
def test_a_submodule_registered_twice_uses_the_evolved_weight_both_times(grad):
    """One Linear under two names: its weight evolves once and both calls use the evolved
    weight, as a solve written with F.linear on that weight does."""

    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = self.b = nn.Linear(4, 4)
            self.c = nn.Linear(4, 4)

        def forward(self, t, x):
            return self.c(torch.tanh(self.b(torch.tanh(self.a(x)))))

    torch.manual_seed(0)
    block = CoupledODEBlock(Shared(), steps=2, grad=grad).double()
    assert block.weight_names == ["a.weight", "c.weight"]
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    y = block(x)
    got = torch.autograd.grad((y * y).sum(), [x, *block.parameters()])
    p = dict(block.func.named_parameters())

    def joint(t, z, thetas):
        wa, wc = thetas
        hidden = torch.tanh(F.linear(torch.tanh(F.linear(z, wa, p["a.bias"])), wa, p["a.bias"]))
        return F.linear(hidden, wc, p["c.bias"]), block.q(t, thetas)

    z = rk4_coupled(joint, x, (p["a.weight"], p["c.weight"]), steps=2)
    expected = torch.autograd.grad((z * z).sum(), [x, *block.parameters()])
    torch.testing.assert_close(y, z, rtol=1e-12, atol=1e-12)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
