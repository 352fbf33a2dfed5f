"""The training loop: epochs of SGD with a step schedule, evaluation, checkpoints, and a
clean stop on SIGINT or SIGTERM. Every random draw is a function of (seed, epoch, batch,
rank) or is saved in the checkpoint, so a resumed run computes what an uninterrupted
one computes, bit for bit on the CPU."""

from __future__ import annotations

import bisect
import os
import signal
from collections import Counter
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DistributedSampler
from tqdm import tqdm

from .. import models
from ..data import Dataset, augment, batches
from ..modes import GradMode, grad_mode_named
from ..adaptive import Adaptive
from ..embedded import PAIRS
from ..methods import as_method
from ..reversible import PREFIX, Reversible
from ..tableau import Tableau
from .checkpoint import save_atomically
from .metrics import append_metrics, peak_memory_bytes, plot_curves, read_metrics


ADAPTIVE_TOLERANCES = (1e-3, 1e-4)
"""rtol and atol of an adaptive method in training, unless given: tolerances a float32
network's solve can meet in few steps (torchdiffeq's defaults, 1e-7 and 1e-9, are below
float32's rounding)."""


@dataclass
class RunConfig:
    """Everything a training run is made of (saved in each checkpoint)."""

    model: str = "sqnxt"
    width: float = 1.0
    method: str = "midpoint"
    coupling: float | None = None
    steps: int = 2
    grad: str = "anode"
    checkpoints: int | None = None
    memory_budget: int | None = None
    rtol: float | None = None
    atol: float | None = None
    coupled: str = "none"
    q: str = "rda"
    reaction: str = "tanh"
    dataset: str = "digits"
    data_root: str = "data"
    num_classes: int = 10
    in_channels: int = 1
    epochs: int = 8
    batch_size: int = 64
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    seed: int = 0
    out: str = "runs/default"
    progress: bool = True
    skip_nonfinite: int = 0

    def grad_mode(self) -> GradMode:
        """The gradient mode that grad, checkpoints, memory_budget and (for grad
        reversible with a method that is not adaptive) rtol spell."""
        rtol = None if self.method in PAIRS else self.rtol
        return grad_mode_named(self.grad, checkpoints=self.checkpoints, memory_budget=self.memory_budget, rtol=rtol)

    def solve_method(self) -> Tableau | Reversible | Adaptive:
        """The method that method, coupling and (adaptive methods) rtol and atol spell.

        Raises:
            ValueError: for an unknown method, a coupling given with a method that is not
                reversible, or tolerances that Adaptive refuses.
        """
        method = as_method(self.method)
        if isinstance(method, Adaptive):
            rtol, atol = (default if value is None else value
                          for value, default in zip((self.rtol, self.atol), ADAPTIVE_TOLERANCES))
            return Adaptive(method.pair, rtol=rtol, atol=atol)
        if self.coupling is None:
            return method
        if not isinstance(method, Reversible):
            raise ValueError(
                f"a coupling goes with a reversible method such as {PREFIX}{self.method}, not with {self.method}"
            )
        return Reversible(method.tableau, self.coupling)

    def block_steps(self) -> int:
        """steps as the ODE blocks take it: 1 (unused) with an adaptive method."""
        return 1 if self.method in PAIRS else self.steps

    def milestones(self) -> list[int]:
        """Epochs after which the learning rate drops by 10 (halfway) and by 100 (three quarters)."""
        return sorted({max(1, round(0.5 * self.epochs)), max(1, round(0.75 * self.epochs))})


@dataclass
class Topology:
    """This process's place in a (possibly single-process) run."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


class NonFiniteError(RuntimeError):
    """A batch gave a non-finite loss or gradient, and no more such batches may be skipped."""


def _gradients_finite(model: nn.Module) -> bool:
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return True
    # One reduction and one host read for the whole model, not one per parameter.
    return bool(torch.isfinite(torch.stack([g.detach().float().abs().sum() for g in grads]).sum()).item())


class StopSignal:
    """Turns the first SIGINT or SIGTERM into a request to checkpoint and stop; a second
    one stops at once."""

    def __init__(self) -> None:
        self.received: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "StopSignal":
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: object) -> None:
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name


def _batch_generator(config: RunConfig, epoch: int, batch: int, rank: int) -> torch.Generator:
    # A pure function of its arguments: resuming at any batch redraws the same augmentation.
    return torch.Generator().manual_seed(((config.seed * 1_000_003 + epoch) * 1_000_003 + batch) * 1_009 + rank)


def _rng_state(device: torch.device) -> dict[str, Any]:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _all_sum(values: list[float], topo: Topology) -> list[float]:
    if not topo.distributed:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=topo.device)
    dist.all_reduce(t)
    return t.tolist()


def evaluate(model: nn.Module, data: Dataset, config: RunConfig, topo: Topology) -> tuple[float, float]:
    """Mean cross-entropy and accuracy on the test split (each rank takes every world_size-th sample)."""
    model.eval()
    indices = torch.arange(topo.rank, len(data.test_labels), topo.world_size)
    loss_sum = correct = 0.0
    with torch.no_grad():
        for x, y in batches(data.test_images, data.test_labels, config.batch_size, indices):
            x, y = x.to(topo.device), y.to(topo.device)
            logits = model(x)
            loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
            correct += (logits.argmax(1) == y).sum().item()
    loss_sum, correct, count = _all_sum([loss_sum, correct, float(len(indices))], topo)
    return loss_sum / count, correct / count


class Trainer:
    """Builds the model and optimizer for a config and runs (or resumes) its epochs."""

    def __init__(self, config: RunConfig, data: Dataset, topo: Topology) -> None:
        self.config, self.data, self.topo = config, data, topo
        torch.manual_seed(config.seed)
        self.model = models.create(
            config.model, num_classes=config.num_classes, in_channels=config.in_channels, width=config.width,
            steps=config.block_steps(), method=config.solve_method(), grad=config.grad_mode(),
            coupled=config.coupled, q=config.q, reaction=config.reaction,
        ).to(topo.device)
        self.net: nn.Module = (
            nn.parallel.DistributedDataParallel(self.model, device_ids=[topo.device.index] if topo.device.type == "cuda" else None)
            if topo.distributed
            else self.model
        )
        self.optimizer = torch.optim.SGD(
            self.model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(self.optimizer, config.milestones(), gamma=0.1)
        self.sampler = DistributedSampler(
            range(len(data.train_labels)), num_replicas=topo.world_size, rank=topo.rank, shuffle=True, seed=config.seed
        )
        self.epoch, self.batch = 1, 0
        self.partial = {"loss_sum": 0.0, "correct": 0.0, "seen": 0.0, "seconds": 0.0}
        self.skipped_nonfinite = 0
        self.saved_at: tuple[int, int] | None = None
        self.metrics_path = os.path.join(config.out, "metrics.jsonl")
        self.checkpoint_path = os.path.join(config.out, "checkpoint.pt")

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint (already checked to fit this model)."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        # The schedule follows this run's --epochs, which may extend the saved run's.
        milestones = self.config.milestones()
        self.scheduler.milestones = Counter(milestones)
        drops = bisect.bisect_right(milestones, self.scheduler.last_epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * self.scheduler.gamma**drops
        self.epoch, self.batch = state["epoch"], state["batch"]
        self.partial = dict(state["partial"])
        self.skipped_nonfinite = int(state.get("skipped_nonfinite", 0))
        self.saved_at = (self.epoch, self.batch)
        _set_rng_state(state["rng"], self.topo.device)

    def checkpoint(self) -> None:
        """Save where the run stands (rank 0 only)."""
        if not self.topo.main:
            return
        save_atomically(
            {
                "config": asdict(self.config),
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "epoch": self.epoch,
                "batch": self.batch,
                "partial": dict(self.partial),
                "skipped_nonfinite": self.skipped_nonfinite,
                "rng": _rng_state(self.topo.device),
            },
            self.checkpoint_path,
        )
        self.saved_at = (self.epoch, self.batch)

    def _finite(self, loss: torch.Tensor, batch: int, total: int) -> bool:
        """True when the loss and every gradient are finite (on every rank). Otherwise the
        batch is skipped while --skip-nonfinite allows, else NonFiniteError is raised
        before the optimizer step: the weights and the last checkpoint stay as they were."""
        bad = not (torch.isfinite(loss).item() and _gradients_finite(self.model))
        if _all_sum([1.0 if bad else 0.0], self.topo)[0] == 0:
            return True
        config = self.config
        where = f"epoch {self.epoch}, batch {batch + 1} of {total}"
        if self.skipped_nonfinite < config.skip_nonfinite:
            self.skipped_nonfinite += 1
            if self.topo.main:
                print(f"anode-train: skipped {where}: non-finite loss or gradient "
                      f"({self.skipped_nonfinite} of {config.skip_nonfinite} skips used)", flush=True)
            return False
        kept = (
            f"the last checkpoint ({self.checkpoint_path}, written at epoch {self.saved_at[0]}, batch "
            f"{self.saved_at[1]}) is left as it was" if self.saved_at else "no checkpoint had been written"
        )
        raise NonFiniteError(
            f"non-finite loss or gradient at {where}; training stopped before the optimizer step and {kept}. "
            f"Likely causes: a learning rate too high for this model (--lr {config.lr:g}); too few or too long "
            f"ODE steps for a stable solve (--steps {config.steps}, --method {config.method}); NaN or infinite "
            "values in the data. --skip-nonfinite N skips up to N such batches instead"
        )

    def _stop_requested(self, stop: StopSignal) -> bool:
        flag = 1.0 if stop.received else 0.0
        return _all_sum([flag], self.topo)[0] > 0

    def run(self) -> str:
        """Train until the last epoch or a stop signal; returns "finished" or "stopped"."""
        config, topo = self.config, self.topo
        with StopSignal() as stop:
            while self.epoch <= config.epochs:
                if self._train_epoch(stop) == "stopped":
                    self.checkpoint()
                    return "stopped"
                self.scheduler.step()
                test_loss, test_accuracy = evaluate(self.net, self.data, config, topo)
                p = self.partial
                record = {
                    "epoch": self.epoch,
                    "lr": self.optimizer.param_groups[0]["lr"],
                    "train_loss": p["loss_sum"] / p["seen"],
                    "train_accuracy": p["correct"] / p["seen"],
                    "test_loss": test_loss,
                    "test_accuracy": test_accuracy,
                    "images_per_s": p["seen"] / max(p["seconds"], 1e-9),
                    "epoch_seconds": p["seconds"],
                    "peak_memory_bytes": peak_memory_bytes(topo.device),
                    "world_size": topo.world_size,
                }
                self.epoch, self.batch = self.epoch + 1, 0
                self.partial = {"loss_sum": 0.0, "correct": 0.0, "seen": 0.0, "seconds": 0.0}
                if topo.main:
                    append_metrics(self.metrics_path, record)
                    plot_curves(read_metrics(self.metrics_path), os.path.join(config.out, "curves.png"))
                    print(
                        f"epoch {record['epoch']}/{config.epochs}: train loss {record['train_loss']:.4f} "
                        f"acc {100 * record['train_accuracy']:.2f}% | test loss {record['test_loss']:.4f} "
                        f"acc {100 * record['test_accuracy']:.2f}% | {record['images_per_s']:.0f} images/s",
                        flush=True,
                    )
                self.checkpoint()
        return "finished"

    def _train_epoch(self, stop: StopSignal) -> str:
        config, topo, data = self.config, self.topo, self.data
        self.net.train()
        self.sampler.set_epoch(self.epoch)
        indices = torch.tensor(list(self.sampler))
        total = (len(indices) + config.batch_size - 1) // config.batch_size
        bar = tqdm(
            total=total, initial=self.batch, desc=f"epoch {self.epoch}/{config.epochs}", leave=False,
            disable=not (config.progress and topo.main),
        )
        for b, (x, y) in enumerate(batches(data.train_images, data.train_labels, config.batch_size, indices)):
            if b < self.batch:
                continue
            started = time.perf_counter()
            if data.augment:
                x = augment(x, _batch_generator(config, self.epoch, b, topo.rank))
            x, y = x.to(topo.device), y.to(topo.device)
            self.optimizer.zero_grad(set_to_none=True)
            logits = self.net(x)
            loss = F.cross_entropy(logits, y)
            loss.backward()
            if not self._finite(loss, b, total):
                self.optimizer.zero_grad(set_to_none=True)
                self.batch = b + 1
                bar.update(1)
                continue
            self.optimizer.step()
            loss_sum, correct, seen = _all_sum(
                [loss.item() * len(y), (logits.argmax(1) == y).sum().item(), float(len(y))], topo
            )
            p = self.partial
            p["loss_sum"] += loss_sum
            p["correct"] += correct
            p["seen"] += seen
            p["seconds"] += time.perf_counter() - started
            self.batch = b + 1
            bar.update(1)
            bar.set_postfix(loss=f"{p['loss_sum'] / p['seen']:.3f}")
            if self._stop_requested(stop):
                bar.close()
                return "stopped"
        bar.close()
        return "done"
