"""Under DistributedDataParallel (2 CPU processes, gloo) the gradients equal those of one
process on the same global batch, for every gradient mode."""

import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from odefuncs import MLPFunc
from torch import nn

from anode_ext import ODEBlock
from anode_ext.modes import grad_mode_named

GLOBAL_BATCH = 8


def make_model(grad):
    torch.manual_seed(0)
    checkpoints = 1 if grad == "revolve" else None
    return nn.Sequential(ODEBlock(MLPFunc(), steps=3, grad=grad_mode_named(grad, checkpoints=checkpoints)), nn.Linear(4, 2)).double()


def make_data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(GLOBAL_BATCH, 4, generator=g, dtype=torch.float64), torch.randn(
        GLOBAL_BATCH, 2, generator=g, dtype=torch.float64
    )


def loss_of(model, x, target):
    return (model(x) - target).square().mean()


def worker(rank, world, init_file, grad, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    model = nn.parallel.DistributedDataParallel(make_model(grad))
    x, target = make_data()
    shard = slice(rank * GLOBAL_BATCH // world, (rank + 1) * GLOBAL_BATCH // world)
    loss_of(model, x[shard], target[shard]).backward()
    torch.save([p.grad for p in model.parameters()], os.path.join(out_dir, f"rank{rank}.pt"))
    # The DDP reducer must go before the process group: if it held the group's last
    # reference, freeing it would wait on gloo's threads while holding the GIL.
    del model
    dist.destroy_process_group()
    # Leave without running the interpreter's and C++'s exit handlers: under load one of
    # gloo's threads can still be running then, and destroying it aborts the process
    # (std::terminate) after the work is done.
    os._exit(0)


@pytest.mark.parametrize("grad", ["direct", "anode", "revolve"])
def test_ddp_gradients_equal_single_process(grad):
    model = make_model(grad)
    x, target = make_data()
    loss_of(model, x, target).backward()
    expected = [p.grad for p in model.parameters()]
    with tempfile.TemporaryDirectory() as out_dir:
        init_file = os.path.join(out_dir, "init")
        mp.spawn(worker, args=(2, init_file, grad, out_dir), nprocs=2, join=True)
        for rank in range(2):
            got = torch.load(os.path.join(out_dir, f"rank{rank}.pt"))
            assert len(got) == len(expected)
            for g, e in zip(got, expected):
                torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-14)
