"""What the gradient methods do to training: the same models, data, seeds and budget
trained with each gradient mode, as ANODE (Gholami et al. 2019, section 4: ODE-SqueezeNext
with the reverse-time adjoint against exact gradients) and ANODEv2 (Zhang et al. 2019,
section 4: coupled against uncoupled ODE networks) measure it.

Each run is one call of the training command's Trainer, in a folder of its own under the
output folder, with its checkpoints: an interrupted sweep, run again with the same
arguments, skips the finished runs and resumes the interrupted one from its checkpoint.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import io
import json
import math
import multiprocessing
import os
import signal
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from .. import models
from ..block import FixedStepBlock
from ..data import Dataset, load_dataset
from ..training.checkpoint import load_checkpoint
from ..training.loop import NonFiniteError, RunConfig, Topology, Trainer
from ..training.metrics import read_metrics
from .memory import count_saved_bytes
from .solvers import TorchdiffeqAdjoint, torchdiffeq

TORCHDIFFEQ_ADJOINT = "torchdiffeq adjoint"
PLAIN = "plain residual network"


@dataclass(frozen=True)
class SweepRun:
    """One configuration of the sweep (all its seeds share it)."""

    model: str
    mode: str  # a gradient mode's name, TORCHDIFFEQ_ADJOINT or PLAIN
    method: str = "midpoint"
    steps: int = 2
    coupled: str = "none"
    width: float = 1.0

    @property
    def label(self) -> str:
        if self.mode == PLAIN:
            return f"{self.model} {PLAIN}"
        coupled = ", coupled" if self.coupled != "none" else ""
        return f"{self.model} {self.method} Nt={self.steps} {self.mode}{coupled}"

    @property
    def folder(self) -> str:
        """Its folder: the label and the width (a sweep at another width starts afresh)."""
        return f"{self.label} width {self.width:g}".replace(" ", "_").replace(",", "").replace("=", "")


def sweep_runs(widths: dict[str, float] | None = None) -> list[SweepRun]:
    """ANODE's comparison (direct, anode, adjoint and, when installed, torchdiffeq's adjoint;
    Euler and midpoint; Nt 1 and 2) and ANODEv2's (every block coupled against the same
    network uncoupled, midpoint, Nt = 2, and the plain residual network), for each model
    of `widths` (model -> width multiplier; default sqnxt and resnet at 1.0)."""
    widths = widths or {"sqnxt": 1.0, "resnet": 1.0}
    modes = ["direct", "anode", "adjoint"] + ([TORCHDIFFEQ_ADJOINT] if torchdiffeq is not None else [])
    runs = [SweepRun(model, mode, method, steps, width=width)
            for model, width in widths.items() for method in ("euler", "midpoint") for steps in (1, 2)
            for mode in modes]
    for model, width in widths.items():
        runs += [SweepRun(model, "anode", "midpoint", 2, coupled="all", width=width),
                 SweepRun(model, PLAIN, width=width)]
    return runs


def _config(run: SweepRun, seed: int, data: Dataset, options: dict[str, Any], out: str) -> RunConfig:
    plain = run.mode == PLAIN
    grad = "direct" if run.mode in (TORCHDIFFEQ_ADJOINT, PLAIN) else run.mode
    return RunConfig(
        model=f"{run.model}_baseline" if plain else run.model, width=run.width, method=run.method, steps=run.steps,
        grad=grad,
        coupled=run.coupled, num_classes=data.num_classes, in_channels=data.in_channels, seed=seed, out=out,
        progress=False, **options,
    )


def _with_mode(run: SweepRun, model: torch.nn.Module) -> torch.nn.Module:
    if run.mode == TORCHDIFFEQ_ADJOINT:
        for block in model.modules():
            if isinstance(block, FixedStepBlock):
                block.grad = TorchdiffeqAdjoint()
    return model


def _trainer(run: SweepRun, config: RunConfig, data: Dataset, topo: Topology) -> Trainer:
    trainer = Trainer(config, data, topo)
    _with_mode(run, trainer.model)
    return trainer


def saved_peak_bytes(run: SweepRun, data: Dataset, options: dict[str, Any], device: torch.device) -> int:
    """The most bytes autograd holds for backward (parameters excluded) in one training
    step of the run's model on one batch: the memory the gradient method costs, measured
    alike on any device (the training's own peak is the process's, shared by all runs)."""
    config = _config(run, 0, data, options, "")
    torch.manual_seed(0)
    model = _with_mode(run, models.create(
        config.model, num_classes=config.num_classes, in_channels=config.in_channels, width=config.width,
        steps=config.block_steps(), method=config.solve_method(), grad=config.grad_mode(), coupled=config.coupled,
    ).to(device))
    x = data.train_images[:config.batch_size].to(device)
    y = data.train_labels[:config.batch_size].to(device)
    with count_saved_bytes(exclude=model.parameters()) as counter:
        F.cross_entropy(model(x), y).backward()
    return counter.peak


def run_folder(root: str, run: SweepRun, seed: int, options: dict[str, Any]) -> str:
    """A run's folder: it names everything that makes a run, so that a sweep with other
    options (dataset, epochs, width) starts afresh instead of mixing in runs of this one."""
    return os.path.join(root, f"{options['dataset']}_{options['epochs']}_epochs", run.folder, f"seed{seed}")


def epoch_records(folder: str, epochs: int) -> list[dict[str, Any]]:
    """The run's per-epoch records, one per epoch (the last written, should a stop between
    a record and its checkpoint have written one twice), epochs 1..`epochs` in order."""
    path = os.path.join(folder, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    by_epoch = {r["epoch"]: r for r in read_metrics(path) if 1 <= r["epoch"] <= epochs}
    return [by_epoch[e] for e in sorted(by_epoch)]


def _done(folder: str, epochs: int) -> bool:
    return os.path.exists(os.path.join(folder, "diverged.json")) or len(epoch_records(folder, epochs)) >= epochs


def train_one(run: SweepRun, seed: int, data: Dataset, options: dict[str, Any], folder: str, topo: Topology) -> str:
    """Train (or resume) one run in `folder`: "finished", "diverged" or "stopped" (a signal;
    its checkpoint is written)."""
    if _done(folder, options["epochs"]):
        return "finished"
    os.makedirs(folder, exist_ok=True)
    config = _config(run, seed, data, options, folder)
    trainer = _trainer(run, config, data, topo)
    checkpoint = os.path.join(folder, "checkpoint.pt")
    if os.path.exists(checkpoint):
        trainer.restore(load_checkpoint(checkpoint))
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the per-epoch lines of 100 runs: the bar says enough
            return trainer.run()
    except NonFiniteError as error:
        with open(os.path.join(folder, "diverged.json"), "w") as f:
            json.dump({"epoch": trainer.epoch, "reason": str(error)}, f)
        return "diverged"


_worker_data: dict[tuple[str, str], Dataset] = {}


def _train_in_worker(run: SweepRun, seed: int, dataset: tuple[str, str], options: dict[str, Any], folder: str) -> str:
    """train_one in a worker process of its own (one thread, the CPU), its data loaded once."""
    torch.set_num_threads(1)
    if dataset not in _worker_data:
        _worker_data[dataset] = load_dataset(*dataset)
    return train_one(run, seed, _worker_data[dataset], options, folder, Topology())


def _in_workers(jobs: list[tuple[SweepRun, int, str]], workers: int, dataset: tuple[str, str],
                options: dict[str, Any], bar: tqdm) -> bool:
    """Train `jobs` in `workers` processes, at most one job each at a time, so that none
    starts after a stop. SIGINT (which reaches the workers too) or SIGTERM (which reaches
    this process alone: it is passed on to them) makes each running job checkpoint and
    return; the rest are not started. Returns whether it stopped."""
    context = multiprocessing.get_context("spawn")  # no fork of a process whose threads torch started
    terminated = []

    def on_sigterm(signum: int, frame: object) -> None:
        terminated.append(signum)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    queue, stopped = list(jobs), False
    try:
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
            running: set[concurrent.futures.Future] = set()
            try:
                while queue or running:
                    while queue and len(running) < workers:
                        run, seed, folder = queue.pop(0)
                        running.add(pool.submit(_train_in_worker, run, seed, dataset, options, folder))
                    finished, running = concurrent.futures.wait(running, return_when=concurrent.futures.FIRST_COMPLETED)
                    for future in finished:
                        if future.result() == "stopped":
                            stopped, queue = True, []
                        bar.update()
            except KeyboardInterrupt:
                stopped, queue = True, []
                if terminated:  # a SIGINT from the terminal reached the workers already; a second would kill them
                    for child in multiprocessing.active_children():
                        os.kill(child.pid, signal.SIGINT)  # their Trainers checkpoint and return
                concurrent.futures.wait(running)
    finally:
        signal.signal(signal.SIGTERM, previous)
    return stopped


def training_sweep(out: str, data: Dataset, options: dict[str, Any], seeds: tuple[int, ...], runs: list[SweepRun],
                   topo: Topology, progress: bool = True, train: Callable[..., str] = train_one,
                   workers: int = 1, data_root: str = "data") -> dict[str, Any]:
    """Train every run with every seed under `out`/training (skipping finished ones) and
    summarize. `options` are RunConfig fields shared by all runs (epochs, batch_size,
    lr, dataset). With workers > 1 (CPU only) that many processes train one
    run each at a time, one thread each: small networks use a core each better than two
    cores together; each loads the dataset options["dataset"] (from data_root) itself,
    which must be what `data` holds. Returns {"runs": [...summaries], "stopped": bool}."""
    root = os.path.join(out, "training")
    jobs = [(run, seed, run_folder(root, run, seed, options)) for run in runs for seed in seeds]
    stopped = False
    with tqdm(total=len(jobs), desc="training sweep", disable=not progress) as bar:
        if workers > 1:
            stopped = _in_workers(jobs, workers, (options["dataset"], data_root), options, bar)
        else:
            for run, seed, folder in jobs:
                bar.set_postfix_str(f"{run.label}, seed {seed}")
                if train(run, seed, data, options, folder, topo) == "stopped":
                    stopped = True
                    break
                bar.update()
    summaries = [summarize(run, [run_folder(root, run, seed, options) for seed in seeds], options["epochs"])
                 for run in runs]
    for run, summary in zip(runs, summaries):
        summary["saved_peak_bytes"] = saved_peak_bytes(run, data, options, topo.device)
    return {"runs": summaries, "stopped": stopped}


def _mean_spread(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarize(run: SweepRun, folders: list[str], epochs: int) -> dict[str, Any]:
    """Per epoch, the mean and standard deviation over the seeds (one folder each) that
    reached it of train loss and test accuracy; final and best test accuracy and training
    time over the seeds that completed."""
    per_seed, diverged = [], 0
    for folder in folders:
        per_seed.append(epoch_records(folder, epochs))
        diverged += os.path.exists(os.path.join(folder, "diverged.json"))
    curves = {}
    for key in ("train_loss", "test_accuracy"):
        curve = []
        for epoch in range(epochs):
            values = [records[epoch][key] for records in per_seed if len(records) > epoch]
            if values:
                mean, spread = _mean_spread(values)
                curve.append({"epoch": epoch + 1, "mean": mean, "std": spread, "seeds": len(values)})
        curves[key] = curve
    complete = [records for records in per_seed if len(records) >= epochs]
    summary: dict[str, Any] = {
        "label": run.label, "model": run.model, "width": run.width, "mode": run.mode, "method": run.method, "steps": run.steps,
        "coupled": run.coupled, "seeds": len(folders), "complete_seeds": len(complete), "diverged_seeds": diverged,
        "curves": curves,
    }
    if complete:
        for name, pick in (("final_accuracy", lambda r: r[-1]["test_accuracy"]),
                           ("best_accuracy", lambda r: max(e["test_accuracy"] for e in r)),
                           ("wall_seconds", lambda r: sum(e["epoch_seconds"] for e in r))):
            summary[name] = _mean_spread([float(pick(r)) for r in complete])
    return summary


def format_training(summaries: list[dict[str, Any]]) -> str:
    """A Markdown table: one line per configuration, mean ± standard deviation over seeds."""
    lines = [
        "| configuration | final test acc. % | best test acc. % | final train loss | train s | saved MiB, peak | seeds (diverged) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for s in summaries:
        seeds = f"{s['complete_seeds']}/{s['seeds']} ({s['diverged_seeds']})"
        if "final_accuracy" not in s:
            lines.append(f"| {s['label']} | - | - | - | - | - | {seeds} |")
            continue
        loss = s["curves"]["train_loss"][-1]
        cell = lambda pair, scale=1.0, digits=1: f"{pair[0] * scale:.{digits}f} ± {pair[1] * scale:.{digits}f}"  # noqa: E731
        lines.append(
            f"| {s['label']} | {cell(s['final_accuracy'], 100)} | {cell(s['best_accuracy'], 100)} "
            f"| {loss['mean']:.3f} ± {loss['std']:.3f} | {cell(s['wall_seconds'])} "
            f"| {s['saved_peak_bytes'] / 2**20:.1f} | {seeds} |"
        )
    return "\n".join(lines)


def finite_figures(summaries: list[dict[str, Any]]) -> bool:
    """Whether every figure of every complete configuration is finite."""
    values = []
    for s in summaries:
        values += [p[k] for curve in s["curves"].values() for p in curve for k in ("mean", "std")]
        values += [v for key in ("final_accuracy", "best_accuracy", "wall_seconds") if key in s for v in s[key]]
    return all(math.isfinite(v) for v in values)
