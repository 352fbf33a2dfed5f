"""Command line of the training command: arguments, checks, and the distributed setup."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import asdict

import torch
import torch.distributed as dist

from .. import models
from ..data import DATASETS, load_dataset
from ..models.blocks import COUPLED_CHOICES
from ..modes import GRAD_MODES, grad_mode_named
from ..rda import REACTIONS
from ..methods import method_label
from ..embedded import PAIRS
from ..reversible import DEFAULT_COUPLING, PREFIX, check_coupling
from ..tableau import TABLEAUX

METHOD_NAMES = [*sorted(TABLEAUX), *(PREFIX + name for name in sorted(TABLEAUX)), *sorted(PAIRS)]
from .checkpoint import check_same_architecture, load_checkpoint
from .loop import ADAPTIVE_TOLERANCES, NonFiniteError, RunConfig, Topology, Trainer


def _int_at_least(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {value}")
        return value

    return parse


_positive_int = _int_at_least(1)
_non_negative_int = _int_at_least(0)


def _float_at_least(minimum: float, strictly: bool):
    bound = f"{'>' if strictly else '>='} {minimum:g}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a finite number {bound}, got {text!r}") from None
        if not math.isfinite(value) or value < minimum or (strictly and value == minimum):
            raise argparse.ArgumentTypeError(f"expected a finite number {bound}, got {value}")
        return value

    return parse


_positive_float = _float_at_least(0.0, strictly=True)
_non_negative_float = _float_at_least(0.0, strictly=False)


def _coupled(text: str) -> str:
    if text in COUPLED_CHOICES or all(part.strip().isdigit() for part in text.split(",")):
        return text
    raise argparse.ArgumentTypeError(f"expected one of {', '.join(COUPLED_CHOICES)} or stage numbers like 2,3")


def _coupling(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}") from None
    try:
        return check_coupling(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def parser() -> argparse.ArgumentParser:
    defaults = RunConfig()
    p = argparse.ArgumentParser(
        prog="anode-train",
        description="Train an ODE network (ANODE / ANODEv2) on digits, CIFAR-10/100 or synthetic data. "
        "Run under `torchrun --nproc_per_node=N` for distributed data-parallel training.",
    )
    p.add_argument("--model", default=defaults.model, help=f"one of {', '.join(models.available())} (default: %(default)s)")
    p.add_argument("--width", type=_positive_float, default=defaults.width, help="layer width multiplier (default: %(default)s)")
    p.add_argument("--method", default=defaults.method, choices=METHOD_NAMES,
                   help="Runge-Kutta method; reversible_<name> is its reversible version; bosh3, dopri5 and tsit5 "
                   "choose their steps (--rtol, --atol) (default: %(default)s)")
    p.add_argument("--coupling", type=_coupling, default=None,
                   help=f"reversible methods: the coupling lambda in (0, 1] (default: {DEFAULT_COUPLING})")
    p.add_argument("--steps", type=_positive_int, default=None,
                   help=f"Nt, steps per ODE block of a fixed-step method (default: {defaults.steps})")
    p.add_argument("--grad", default=defaults.grad, choices=list(GRAD_MODES), help="gradient mode (default: %(default)s)")
    p.add_argument("--checkpoints", type=_positive_int, default=None,
                   help="--grad revolve: states kept per block besides its input (default: ceil(log2 steps))")
    p.add_argument("--memory-budget", type=_non_negative_int, default=None, metavar="BYTES",
                   help="--grad revolve: bytes each block's kept states may take (instead of --checkpoints); "
                   "a budget that holds no state of a block stops the run at its first step")
    p.add_argument("--rtol", type=_positive_float, default=None,
                   help="adaptive methods: the relative tolerance of the step-size control (default: "
                   f"{ADAPTIVE_TOLERANCES[0]:g}); --grad reversible: the tolerance of the check of the states computed "
                   "back (default: sqrt(eps) of the dtype)")
    p.add_argument("--atol", type=_positive_float, default=None,
                   help=f"adaptive methods: the absolute tolerance of the step-size control (default: "
                   f"{ADAPTIVE_TOLERANCES[1]:g})")
    p.add_argument("--coupled", type=_coupled, default=defaults.coupled,
                   help="ANODEv2: which ODE blocks evolve their weights: none, all, first, last or stages like 2,3")
    p.add_argument("--q", default=defaults.q, choices=["rda"], help="weight dynamics of coupled blocks")
    p.add_argument("--reaction", default=defaults.reaction, choices=[r for r in REACTIONS if r != "none"])
    p.add_argument("--dataset", default=defaults.dataset, choices=DATASETS, help="(default: %(default)s)")
    p.add_argument("--data-root", default=defaults.data_root,
                   help="folder holding cifar-10-batches-py / cifar-100-python (default: %(default)s)")
    p.add_argument("--epochs", type=_positive_int, default=defaults.epochs, help="(default: %(default)s)")
    p.add_argument("--batch-size", type=_positive_int, default=defaults.batch_size, help="per process (default: %(default)s)")
    p.add_argument("--lr", type=_positive_float, default=defaults.lr,
                   help="initial learning rate; divided by 10 at half the epochs and by 100 at three quarters (default: %(default)s)")
    p.add_argument("--momentum", type=_non_negative_float, default=defaults.momentum)
    p.add_argument("--weight-decay", type=_non_negative_float, default=defaults.weight_decay)
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--out", default=defaults.out, help="output folder: metrics.jsonl, curves.png, checkpoint.pt (default: %(default)s)")
    p.add_argument("--resume", default=None, help="a checkpoint.pt to continue from")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--skip-nonfinite", type=_non_negative_int, default=0, metavar="N",
                   help="skip up to N batches whose loss or gradient is not finite (default: stop at the first)")
    return p


def _check_output_folder(out: str) -> None:
    try:
        os.makedirs(out, exist_ok=True)
        # A file of this process's own: every rank of a torchrun job probes the same folder at once.
        with tempfile.TemporaryFile(dir=out) as probe:
            probe.write(b"ok")
    except OSError as error:
        raise SystemExit(f"anode-train: cannot write to the output folder {out!r}: {error.strerror or error}") from None


def _topology(device_arg: str | None) -> Topology:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device_arg == "cuda" or (device_arg is None and torch.cuda.is_available())
    if device_arg not in (None, "cpu", "cuda"):
        raise SystemExit(f"anode-train: --device must be cpu or cuda, got {device_arg!r}")
    if use_cuda and not torch.cuda.is_available():
        raise SystemExit("anode-train: --device cuda was asked for but no CUDA GPU is available")
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if world > 1:
        dist.init_process_group("nccl" if use_cuda else "gloo", rank=rank, world_size=world)
    return Topology(rank=rank, world_size=world, device=device)


def build_config(args: argparse.Namespace, num_classes: int, in_channels: int) -> RunConfig:
    coupled = args.coupled
    if coupled not in COUPLED_CHOICES:
        coupled = [int(part) for part in coupled.split(",")]
    return RunConfig(
        model=args.model, width=args.width, method=args.method, steps=RunConfig.steps if args.steps is None else args.steps,
        grad=args.grad, coupling=args.coupling, checkpoints=args.checkpoints, memory_budget=args.memory_budget,
        rtol=args.rtol, atol=args.atol,
        coupled=coupled, q=args.q,
        reaction=args.reaction, dataset=args.dataset,
        data_root=args.data_root, num_classes=num_classes, in_channels=in_channels, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay,
        seed=args.seed, out=args.out, progress=not args.no_progress, skip_nonfinite=args.skip_nonfinite,
    )


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.model not in models.available():
        raise SystemExit(f"anode-train: unknown model {args.model!r}; expected one of {', '.join(models.available())}")
    adaptive = args.method in PAIRS
    check_rtol = args.rtol if not adaptive else None
    if args.rtol is not None and not adaptive and args.grad != "reversible":
        raise SystemExit(f"anode-train: --rtol goes with an adaptive method ({', '.join(sorted(PAIRS))}) or with "
                         "--grad reversible")
    try:
        grad_mode_named(args.grad, checkpoints=args.checkpoints, memory_budget=args.memory_budget, rtol=check_rtol)
    except ValueError as error:
        raise SystemExit(f"anode-train: --grad {args.grad}: {error}") from None
    if adaptive and args.steps is not None:
        raise SystemExit(f"anode-train: --method {args.method} chooses its own steps; drop --steps (or give --rtol/--atol)")
    if args.atol is not None and not adaptive:
        raise SystemExit(f"anode-train: --atol goes with an adaptive method ({', '.join(sorted(PAIRS))})")
    reversible = args.method.startswith(PREFIX)
    example = PREFIX + (args.method if args.method in TABLEAUX else "rk4")
    if args.coupling is not None and not reversible:
        raise SystemExit(f"anode-train: --coupling goes with a reversible method such as --method {example}")
    if args.grad == "reversible" and not reversible:
        raise SystemExit(f"anode-train: --grad reversible needs a reversible method such as --method {example}")
    if args.grad == "adjoint" and reversible:
        raise SystemExit(f"anode-train: --grad adjoint does not step a reversible method; use --grad reversible or "
                         f"--method {args.method.removeprefix(PREFIX)}")
    if args.coupled != "none" and args.model.endswith("_baseline"):
        raise SystemExit("anode-train: --coupled needs an ODE model; baselines have no ODE blocks")
    resume = None
    if args.resume:
        try:
            resume = load_checkpoint(args.resume)
        except (FileNotFoundError, ValueError) as error:
            raise SystemExit(f"anode-train: {error}") from None
    _check_output_folder(args.out)
    try:
        data = load_dataset(args.dataset, args.data_root)
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(f"anode-train: dataset {args.dataset}: {error}") from None
    config = build_config(args, data.num_classes, data.in_channels)
    if resume is not None:
        try:
            check_same_architecture(resume["config"], asdict(config), args.resume)
        except ValueError as error:
            raise SystemExit(f"anode-train: {error}") from None
    topo = _topology(args.device)
    try:
        try:
            trainer = Trainer(config, data, topo)
        except (ValueError, TypeError) as error:  # the model's options (models.create checks them)
            raise SystemExit(f"anode-train: {error}") from None
        if resume is not None:
            trainer.restore(resume)
        if topo.main:
            with open(os.path.join(args.out, "config.json"), "w") as f:
                json.dump({**asdict(config), "world_size": topo.world_size, "device": str(topo.device)}, f, indent=2)
            print(
                f"training {config.model} (x{config.width:g}, {models.parameter_count(trainer.model):,} parameters, "
                f"{method_label(config.solve_method())}, Nt={'adaptive' if config.method in PAIRS else config.steps}, grad={config.grad_mode()!r}, coupled={config.coupled}) on {config.dataset} "
                f"({len(data.train_labels)} train / {len(data.test_labels)} test images), {topo.world_size} process(es) "
                f"on {topo.device}, from epoch {trainer.epoch}",
                flush=True,
            )
        started = time.perf_counter()
        try:
            outcome = trainer.run()
        except NonFiniteError as error:
            raise SystemExit(f"anode-train: {error}") from None
        except ValueError as error:  # an option that only the first solve can check (--memory-budget)
            raise SystemExit(f"anode-train: {error}") from None
        if topo.distributed:
            # No rank tears the group down while another is still writing its outputs or in a
            # collective: a peer that goes first can make gloo abort the other (exit -6).
            dist.barrier()
        if topo.main:
            if outcome == "stopped":
                print(f"stopped: checkpoint written to {trainer.checkpoint_path}; continue with --resume "
                      f"{trainer.checkpoint_path}", flush=True)
            else:
                print(f"finished in {time.perf_counter() - started:.0f} s; metrics in {trainer.metrics_path}", flush=True)
    finally:
        if topo.distributed:
            # The DDP reducer must go before the process group (see tests/test_distributed.py).
            trainer = None
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
