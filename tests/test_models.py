"""The model families: shapes, baselines, exact gradients in every mode, persistence."""

import io
import re
from pathlib import Path

import pytest
import torch
from testing import relative_error

from anode_ext import CoupledODEBlock, ODEBlock, models
from anode_ext.modes import grad_mode_named

SMALL = {"resnet": 0.125, "sqnxt": 0.25, "resnet_baseline": 0.125, "sqnxt_baseline": 0.25}


def small(name, **kwargs):
    torch.manual_seed(0)
    return models.create(name, width=SMALL[name], **kwargs)


def images(n=2, seed=0, dtype=torch.float32):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.mark.parametrize("num_classes", [10, 100])
@pytest.mark.parametrize("name", models.available())
def test_output_shape(name, num_classes):
    model = small(name, num_classes=num_classes)
    assert model(images(3)).shape == (3, num_classes)


def test_published_sizes():
    assert models.parameter_count(models.create("resnet")) == 11_173_962  # ResNet-18 for CIFAR-10
    ode = models.create("sqnxt")
    assert sum(isinstance(m, ODEBlock) for m in ode.modules()) == 4
    assert sum(isinstance(m, ODEBlock) for m in models.create("resnet").modules()) == 4


@pytest.mark.parametrize("family", ["resnet", "sqnxt"])
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_euler_one_step_is_the_baseline(family, train):
    baseline = small(f"{family}_baseline")
    ode = small(family, method="euler", steps=1, grad="direct")
    ode.load_state_dict(baseline.state_dict())
    baseline.train(train)
    ode.train(train)
    x = images(4)
    torch.testing.assert_close(ode(x), baseline(x), rtol=0, atol=0)


def loss_and_grads(model, x, target):
    model.zero_grad(set_to_none=True)
    loss = torch.nn.functional.cross_entropy(model(x), target)
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("coupled", ["none", "all"])
@pytest.mark.parametrize("grad, checkpoints", [("anode", None), ("revolve", 1)], ids=["anode", "revolve"])
@pytest.mark.parametrize("family", ["resnet", "sqnxt"])
def test_training_step_equals_direct(family, grad, checkpoints, coupled):
    x = images(2, dtype=torch.float64)
    target = torch.tensor([1, 7])
    reference = small(family, steps=3, grad="direct", coupled=coupled).double()
    model = small(family, steps=3, grad=grad_mode_named(grad, checkpoints=checkpoints), coupled=coupled).double()
    loss_ref, grads_ref = loss_and_grads(reference, x, target)
    loss, grads = loss_and_grads(model, x, target)
    assert loss == pytest.approx(loss_ref, rel=1e-12)
    assert grads.keys() == grads_ref.keys()
    for name in grads:
        assert relative_error(grads[name], grads_ref[name]) <= 1e-10, name
    for a, b in zip(model.buffers(), reference.buffers()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=0)


@pytest.mark.parametrize("name", ["resnet", "sqnxt"])
def test_coupled_configurations(name):
    counts = {}
    for coupled in ("none", "first", "last", "all", [2, 3]):
        model = small(name, coupled=coupled)
        counts[str(coupled)] = sum(isinstance(m, CoupledODEBlock) for m in model.modules())
        assert model(images(2)).shape == (2, 10)
    assert counts == {"none": 0, "first": 1, "last": 1, "all": 4, "[2, 3]": 2}


@pytest.mark.parametrize("name", models.available())
def test_state_dict_round_trip(name):
    model = small(name).eval()
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    torch.manual_seed(123)
    other = models.create(name, width=SMALL[name]).eval()
    other.load_state_dict(torch.load(buffer))
    x = images(2)
    torch.testing.assert_close(other(x), model(x), rtol=0, atol=0)


@pytest.mark.parametrize("name", ["resnet", "sqnxt"])
def test_eval_is_deterministic(name):
    model = small(name, coupled="last").eval()
    buffers = [b.clone() for b in model.buffers()]
    x = images(3)
    with torch.no_grad():
        first, second = model(x), model(x)
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    for a, b in zip(model.buffers(), buffers):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["resnet", "sqnxt"])
def test_cpu_bfloat16_autocast(name):
    model = small(name, coupled="all")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(images(2))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()
    out.float().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_errors():
    with pytest.raises(ValueError, match="unknown model 'vgg'; expected one of resnet, resnet_baseline, sqnxt, sqnxt_baseline"):
        models.create("vgg")
    with pytest.raises(ValueError, match="num_classes must be an integer >= 2"):
        models.create("sqnxt", num_classes=1)
    with pytest.raises(ValueError, match="coupled blocks need ode=True"):
        models.create("sqnxt_baseline", coupled="all")
    with pytest.raises(ValueError, match=r"coupled stages \[5\] do not exist"):
        models.create("sqnxt", coupled=[5])
    with pytest.raises(ValueError, match="unknown coupled='some'"):
        models.create("sqnxt", coupled="some")
    with pytest.raises(ValueError, match="width must be a positive number"):
        models.create("resnet", width=0)
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        models.create("resnet", steps=0)
    with pytest.raises(TypeError, match="model 'resnet'"):
        models.create("resnet", blocks=(1, 1, 1, 1))


def test_docs_list_every_parameter_count():
    text = (Path(__file__).parent.parent / "docs" / "models.md").read_text()
    for name in models.available():
        for num_classes in (10, 100):
            count = models.parameter_count(models.create(name, num_classes=num_classes))
            row = re.search(rf"^\| `{name}` \| {num_classes} \| ([\d,]+) \|", text, re.MULTILINE)
            assert row, f"docs/models.md has no row for {name} with {num_classes} classes"
            assert int(row.group(1).replace(",", "")) == count, name
