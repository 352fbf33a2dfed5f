"""The benchmark report: runs each section, prints a summary and writes the results."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from .._extras import require
from .adaptive_bench import (
    format_gradient_modes,
    format_work_precision,
    gradient_modes,
    work_precision,
)
from .adaptive_bench import format_step_overhead as format_adaptive_overhead
from .adaptive_bench import step_overhead as adaptive_step_overhead
from .blocks import block_benchmark, format_block_rows
from .coupled_bench import coupled_benchmark, format_coupled
from .environment import best_device, describe
from .models_bench import format_model_rows, model_benchmark
from .ops import format_rda_ops, format_rk4_table, rda_filters_for, rda_ops_benchmark, rk4_combine_benchmark
from .overhead import format_overhead, overhead_benchmark
from .plots import plot_blocks, plot_reversibility, plot_work_precision
from .reversibility import format_reversibility, reversibility
from .reversible_bench import (
    MAX_STEPS_ONE_CHECKPOINT,
    format_agreement,
    format_reversible,
    gradient_agreement,
    reversible_benchmark,
)
from .soak import format_soak, soak
from .revolve_table import format_revolve_table, revolve_table
from .solver_costs import (
    adjoint_errors,
    conv_block_costs,
    format_adjoint_errors,
    format_conv_block,
    format_step_overhead,
    step_overhead,
)
from .solvers import solvers, torchdiffeq_version
from .timing import MAX_RERUNS, NOISE_THRESHOLD, NOISY_MARK, noisy_footnote, timing_summaries


@dataclass
class Preset:
    """Sizes of every section; the default is sized for about 5 minutes on a 2-core CPU."""

    numel: int = 1 << 24
    repeats: int = 3
    block_channels: dict[str, int] = field(default_factory=lambda: {"resnet": 16, "sqnxt": 32})
    block_batch: int = 8
    image_size: int = 32
    block_methods: tuple[str, ...] = ("euler", "midpoint", "rk4")
    block_steps: tuple[int, ...] = (1, 2, 4, 8)
    revolve_checkpoints: tuple[int, ...] = (1, 2)
    model_widths: dict[str, float] = field(default_factory=lambda: {"resnet": 0.25, "sqnxt": 0.5})
    model_batch: int = 8
    model_steps: tuple[int, ...] = (2, 8)
    model_method: str = "midpoint"
    revolve_steps: tuple[int, ...] = (8, 32, 128)
    reversibility_steps: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 128, 512)
    reversibility_scales: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0)
    overhead_calls: int = 2000
    conv_block: dict[str, int] = field(default_factory=lambda: {"channels": 64, "batch": 8, "image_size": 32, "steps": 4})
    step_overhead_steps: int = 100
    adjoint_error_steps: tuple[int, ...] = (1, 2, 4, 8)
    adjoint_error_block: dict[str, int] = field(default_factory=lambda: {"channels": 32, "image_size": 16, "batch": 2})
    soak_steps: int = 10_000
    reversible_steps: tuple[int, ...] = (8, 32, 128)
    reversible_agreement_steps: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    # The training section on digits: narrower and shorter than the papers, so that its
    # 108 runs take about 17 minutes on a 2-core CPU. Other datasets train at width 1.0.
    training_widths: dict[str, float] = field(default_factory=lambda: {"sqnxt": 0.25, "resnet": 0.125})
    training_epochs: int = 4
    training_seeds: tuple[int, ...] = (0, 1, 2)
    training_quick: bool = False
    reversible_blocks: dict[str, dict[str, int]] = field(default_factory=lambda: {
        "mlp": {"dim": 16, "hidden": 64, "batch": 32},
        "resnet": {"channels": 8, "image_size": 8, "batch": 4},
    })
    adaptive_rtols: tuple[float, ...] = (1e-3, 1e-5, 1e-7)
    adaptive_overhead_t1: float = 10.0
    adaptive_modes_t1: float = 4.0


PRESETS = {
    "default": Preset(),
    "gpu": Preset(
        numel=1 << 26,
        repeats=5,
        block_channels={"resnet": 64, "sqnxt": 32},
        block_batch=128,
        model_widths={"resnet": 1.0, "sqnxt": 1.0},
        model_batch=128,
        conv_block={"channels": 64, "batch": 128, "image_size": 32, "steps": 4},
    ),
    "full": Preset(
        repeats=5,
        block_channels={"resnet": 64, "sqnxt": 32},
        block_batch=16,
        model_widths={"resnet": 1.0, "sqnxt": 1.0},
        model_batch=16,
        model_steps=(1, 2, 4, 8),
        conv_block={"channels": 64, "batch": 32, "image_size": 32, "steps": 4},
        reversible_steps=(8, 32, 128, 512),
        reversible_blocks={
            "mlp": {"dim": 16, "hidden": 64, "batch": 32},
            "resnet": {"channels": 16, "image_size": 16, "batch": 8},
        },
        adaptive_rtols=(1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8),
    ),
    "quick": Preset(
        numel=1 << 12,
        repeats=1,
        block_channels={"resnet": 4, "sqnxt": 8},
        block_batch=2,
        image_size=8,
        block_methods=("euler", "midpoint"),
        block_steps=(1, 2),
        revolve_checkpoints=(1,),
        model_widths={"resnet": 0.0625, "sqnxt": 0.125},
        model_batch=2,
        model_steps=(2,),
        revolve_steps=(8,),
        reversibility_steps=(1, 4),
        reversibility_scales=(1.0, 4.0),
        overhead_calls=200,
        conv_block={"channels": 4, "batch": 2, "image_size": 8, "steps": 2},
        step_overhead_steps=5,
        adjoint_error_steps=(1, 2),
        adjoint_error_block={"channels": 4, "image_size": 8, "batch": 1},
        soak_steps=40,
        reversible_steps=(2, 4),
        reversible_agreement_steps=(1, 2),
        training_widths={"resnet": 0.0625},
        training_epochs=1,
        training_seeds=(0, 1),
        training_quick=True,
        reversible_blocks={"mlp": {"dim": 4, "hidden": 8, "batch": 2}, "resnet": {"channels": 4, "image_size": 4, "batch": 1}},
        adaptive_rtols=(1e-3,),
        adaptive_overhead_t1=1.0,
        adaptive_modes_t1=0.5,
    ),
}

Section = Callable[[argparse.Namespace, Preset], tuple[Any, str, str]]


def ops_section(args: argparse.Namespace, p: Preset) -> tuple[Any, str, str]:
    dtypes = [torch.float32, torch.bfloat16] if args.device == "cuda" else [torch.float32]
    rows = [rk4_combine_benchmark(p.numel, args.device, dtype, max(p.repeats, 5)) for dtype in dtypes]
    return rows, "rk_combine: the fused RK4 update against eager PyTorch and the memory floor", format_rk4_table(rows)


def rda_section(args: argparse.Namespace, p: Preset) -> tuple[Any, str, str]:
    dtypes = [torch.float32, torch.bfloat16] if args.device == "cuda" else [torch.float32]
    rows = [rda_ops_benchmark(rda_filters_for(p.numel), args.device, dtype, max(p.repeats, 5)) for dtype in dtypes]
    return rows, "RDA ops: q, the fused RK4 weight step and its backward against their floors", format_rda_ops(rows)


def overhead_section(args: argparse.Namespace, p: Preset) -> tuple[Any, str, str]:
    result = overhead_benchmark(max(p.repeats, 5), calls=p.overhead_calls)
    return result, "Per-call overhead (CPU): what decided the C++ autograd kernels and step loop", format_overhead(result)


def conv_block_section(args: argparse.Namespace, p: Preset) -> tuple[Any, str, str]:
    result = conv_block_costs(**p.conv_block, method="rk4", device=args.device, repeats=p.repeats)
    return result, "Training step of a conv ODE block: anode against direct and torchdiffeq", format_conv_block(result)


def step_overhead_section(args: argparse.Namespace, p: Preset) -> tuple[Any, str, str]:
    result = step_overhead(steps=p.step_overhead_steps, repeats=max(5, 5 * p.repeats))
    title = "Solver overhead per step with a cheap func (CPU): anode_ext against torchdiffeq"
    return result, title, format_step_overhead(result)


def adjoint_error_section(args: argparse.Namespace, p: Preset) -> tuple[Any, str, str]:
    rows = adjoint_errors(p.adjoint_error_steps, **p.adjoint_error_block)
    block = p.adjoint_error_block
    title = (
        f"Adjoint gradient error against the exact discrete gradient (conv–ReLU block, {block['channels']} channels, "
        f"{block['image_size']}×{block['image_size']}, rk4, float64)"
    )
    return rows, title, format_adjoint_errors(rows)


def revolve_section(args: argparse.Namespace, p: Preset) -> tuple[Any, str, str]:
    rows = revolve_table(p.revolve_steps)
    title = "Revolve against anode: peak bytes saved for backward and func evaluations (Euler, conv block)"
    return rows, title, format_revolve_table(rows)


def blocks_section(args: argparse.Namespace, p: Preset) -> tuple[Any, str, str]:
    solver_list = solvers(p.revolve_checkpoints)
    rows = []
    for kind, channels in p.block_channels.items():
        for method in p.block_methods:
            for steps in p.block_steps:
                print(f"  {kind} block ({channels} channels, batch {p.block_batch}), {method}, Nt={steps}", flush=True)
                rows += block_benchmark(
                    kind, channels, p.block_batch, p.image_size, method, steps, solver_list, args.device, p.repeats
                )
    plots = plot_blocks(rows, args.out)
    shown = 2 if 2 in p.block_steps else p.block_steps[0]
    title = (
        f"ODE blocks, every gradient mode (Nt={shown} shown; every Nt in results.json and the plots "
        f"{', '.join(os.path.basename(x) for x in plots)})"
    )
    return rows, title, format_block_rows(rows, shown)


def coupled_section(args: argparse.Namespace, p: Preset) -> tuple[Any, str, str]:
    rows = [
        coupled_benchmark(kind, channels, p.block_batch, p.image_size, p.model_method, steps, grad, args.device, p.repeats)
        for kind, channels in p.block_channels.items()
        for steps in p.model_steps
        for grad in ("direct", "anode")
    ]
    return rows, "ANODEv2: a coupled (RDA) block's training step against the same block uncoupled", format_coupled(rows)


def models_section(args: argparse.Namespace, p: Preset) -> tuple[Any, str, str]:
    rows = []
    for name, width in p.model_widths.items():
        for steps in p.model_steps:
            print(f"  {name} (width x{width:g}, batch {p.model_batch}), {p.model_method}, Nt={steps}", flush=True)
            rows += model_benchmark(
                name, width, p.model_batch, p.image_size, steps, p.model_method, args.device, p.repeats
            )
    return rows, "Whole models: a training step in each gradient mode", format_model_rows(rows)


def reversibility_section(args: argparse.Namespace, p: Preset) -> tuple[Any, str, str]:
    rows = reversibility(p.reversibility_steps, p.reversibility_scales)
    plot_reversibility(rows, args.out)
    title = ("Reversibility of a ReLU conv block (Euler): relative error of the input reconstructed backwards, by a "
             "reverse-time solve (what the adjoint relies on) and by the reversible method's inverse (what "
             "grad='reversible' relies on)")
    return rows, title, format_reversibility(rows)


def reversible_section(args: argparse.Namespace, p: Preset) -> tuple[Any, str, str]:
    rows, agreement = [], []
    for kind, size in p.reversible_blocks.items():
        rows += reversible_benchmark(kind, size, p.reversible_steps, p.repeats)
        agreement += gradient_agreement(kind, size, p.reversible_agreement_steps)
    sizes = "; ".join(f"{kind} {', '.join(f'{k} {v}' for k, v in size.items())}" for kind, size in p.reversible_blocks.items())
    title = (
        f"Reversible solver: training step, peak bytes saved for backward and evaluations against anode and revolve "
        f"(rk4 base, CPU; {sizes}; revolve c=1 only up to Nt={MAX_STEPS_ONE_CHECKPOINT})"
    )
    table = (
        format_reversible(rows) + noisy_footnote(r["timing"] for r in rows)
        + "\n\nGradient of grad='reversible' against grad='direct' on the same reversible method: the largest "
        "relative error over every base tableau (float64)\n\n" + format_agreement(agreement)
    )
    return {"timings": rows, "gradient_agreement": agreement}, title, table


def adaptive_section(args: argparse.Namespace, p: Preset) -> tuple[Any, str, str]:
    precision = work_precision(p.adaptive_rtols)
    plot = plot_work_precision(precision, args.out)
    overhead = adaptive_step_overhead(max(5, 3 * p.repeats), t1=p.adaptive_overhead_t1)
    modes = gradient_modes(max(3, p.repeats), t1=p.adaptive_modes_t1)
    title = "Adaptive steps (dopri5, CPU): anode_ext against torchdiffeq and torchode on the same problems and tolerances"
    table = (
        f"Func evaluations (NFE) and relative error of y(t1) against a solve at rtol = atol = 1e-12 (atol = rtol / "
        f"1000, float64; plot {os.path.basename(plot)})\n\n" + format_work_precision(precision)
        + "\n\nSolver overhead: the time a library adds to its func evaluations, per accepted step\n\n"
        + format_adaptive_overhead(overhead)
        + f"\n\nGradient modes on one adaptive solve (the MLP above, t in [0, {p.adaptive_modes_t1:g}], rtol 1e-5, "
        "atol 1e-7): training step in float32, gradient error in float64 against direct's, which is the exact "
        "gradient of the discrete solve\n\n" + format_gradient_modes(modes)
    )
    return {"work_precision": precision, "step_overhead": overhead, "gradient_modes": modes}, title, table


def training_section(args: argparse.Namespace, p: Preset) -> tuple[Any, str, str]:
    require("train", "anode-bench --sections training")
    from ..data import load_dataset
    from ..training.loop import Topology
    from .plots import plot_training
    from .training_sweep import PLAIN, SweepRun, format_training, sweep_runs, training_sweep

    try:
        data = load_dataset(args.dataset, args.data_root)
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(f"anode-bench: dataset {args.dataset}: {error}") from None
    digits = args.dataset == "digits"
    sized = digits or p.training_quick  # the quick preset is quick on any data
    widths = p.training_widths if sized else {"sqnxt": 1.0, "resnet": 1.0}
    epochs = args.epochs or (p.training_epochs if sized else 50)
    options = {"epochs": epochs, "batch_size": 64, "dataset": args.dataset}
    runs = sweep_runs(widths)
    if p.training_quick:
        width = widths["resnet"]
        runs = [SweepRun("resnet", "anode", "euler", 1, width=width), SweepRun("resnet", PLAIN, width=width)]
        widths = {"resnet": width}
    # Two processes of one thread each on the CPU: networks this small keep a core each
    # busier than two cores together. One process on a GPU.
    workers = min(2, os.cpu_count() or 1) if args.device == "cpu" and not p.training_quick else 1
    result = training_sweep(args.out, data, options, p.training_seeds, runs, Topology(device=torch.device(args.device)),
                            workers=workers, data_root=args.data_root)
    if result["stopped"]:
        raise SystemExit("anode-bench: the training sweep was interrupted; the same command resumes it")
    plots = plot_training(result["runs"], args.out)
    title = (
        f"What the gradient methods do to training: {args.dataset}, "
        f"{', '.join(f'{model} width ×{w:g}' for model, w in widths.items())}, {epochs} "
        f"epoch{'s' if epochs > 1 else ''}, batch 64, "
        f"{workers} run{'s' if workers > 1 else ''} at a time{', one thread each' if workers > 1 else ''}, "
        f"seeds {', '.join(map(str, p.training_seeds))} (mean ± standard deviation over seeds; plots "
        f"{', '.join(os.path.basename(x) for x in plots)})"
        + ("; narrower and shorter than the papers (ODE-SqueezeNext and ODE-ResNet at width 1.0 on CIFAR-10 for "
           "hundreds of epochs) to fit a 2-core CPU" if digits else "")
    )
    notes = (
        "\n\nSeeds: complete of run (diverged). Curves and accuracies average the seeds that completed; a "
        "configuration whose seeds all diverged has no curve. Train time is one run's, on one thread when runs "
        "train two at a time. Saved MiB: the most bytes held for backward in one training step (batch 64, "
        "parameters excluded). direct and anode have the same gradients, so their lines coincide in the plots, "
        "as do the adjoint's and torchdiffeq's training losses (torchdiffeq's adjoint updates BatchNorm's "
        "running statistics again in its backward, which only evaluation sees)."
    )
    return result, title, format_training(result["runs"]) + notes


def soak_section(args: argparse.Namespace, p: Preset) -> tuple[Any, str, str]:
    every = max(1, p.soak_steps // 20)
    rows = soak(p.soak_steps, every)
    title = (
        f"Soak: {p.soak_steps} training steps of an ODE block per mode (CPU), resident memory and live "
        f"tensors every {every} steps, growth from the first reading to the last"
    )
    return rows, title, format_soak(rows)


SECTIONS: dict[str, Section] = {
    "ops": ops_section,
    "rda": rda_section,
    "overhead": overhead_section,
    "step_overhead": step_overhead_section,
    "conv_block": conv_block_section,
    "adjoint_error": adjoint_error_section,
    "revolve": revolve_section,
    "blocks": blocks_section,
    "coupled": coupled_section,
    "models": models_section,
    "reversibility": reversibility_section,
    "reversible": reversible_section,
    "adaptive": adaptive_section,
    "soak": soak_section,
    "training": training_section,
}
# Long runs of their own, asked for by name: the soak test and the training sweep (~17 min).
DEFAULT_SECTIONS = [name for name in SECTIONS if name not in ("soak", "training")]


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="anode-bench",
        description="Benchmark anode_ext: fused ops, ODE blocks and whole models in every gradient mode, "
        "against torchdiffeq when installed. Writes results.json, report.md and PNG plots.",
    )
    parser.add_argument("--out", default="bench_out", help="output folder (default: %(default)s)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--full", action="store_true", help="the larger grid: published widths on the CPU too")
    size.add_argument("--quick", action="store_true", help="the smallest sizes (a smoke test of the report)")
    parser.add_argument(
        "--sections",
        default=",".join(DEFAULT_SECTIONS),
        help=f"comma-separated sections, from {', '.join(SECTIONS)} (default: all but soak and training)",
    )
    parser.add_argument("--dataset", default="digits",
                        help="the training section's data: digits (bundled) or cifar10 / cifar100 from --data-root")
    parser.add_argument("--data-root", default="data", help="folder holding the CIFAR archives (default: %(default)s)")
    parser.add_argument("--epochs", type=_positive_int, default=None,
                        help="the training section's epochs per run (default: 4 on digits, 50 otherwise)")
    args = parser.parse_args(argv)
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in args.sections if s not in SECTIONS]
    if unknown or not args.sections:
        parser.error(f"unknown section(s) {', '.join(unknown) or '(none given)'}; expected some of {', '.join(SECTIONS)}")
    if "training" in args.sections:
        from ..data import DATASETS

        if args.dataset not in DATASETS:
            parser.error(f"unknown --dataset {args.dataset!r}; expected one of {', '.join(DATASETS)}")
    args.device = args.device or best_device()
    if args.device not in ("cpu", "cuda"):
        parser.error(f"--device must be cpu or cuda, got {args.device!r}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda was asked for but no CUDA GPU is available")
    return args


def choose_preset(args: argparse.Namespace) -> tuple[str, Preset]:
    if args.quick:
        return "quick", PRESETS["quick"]
    if args.full:
        return "full", PRESETS["full"]
    if args.device == "cuda":
        return "gpu", PRESETS["gpu"]
    return "default", PRESETS["default"]


def write_atomically(path: str, text: str) -> None:
    """Write `text` to `path` through a temporary file, so a reader never sees half a file."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def non_finite(value: Any, where: str = "results") -> list[str]:
    """Paths of every number in `value` that is NaN or infinite."""
    if isinstance(value, float):
        return [] if math.isfinite(value) else [where]
    if isinstance(value, dict):
        return [bad for k, v in value.items() for bad in non_finite(v, f"{where}.{k}")]
    if isinstance(value, list):
        return [bad for i, v in enumerate(value) for bad in non_finite(v, f"{where}[{i}]")]
    return []


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        os.makedirs(args.out, exist_ok=True)
    except OSError as error:
        print(f"anode-bench: cannot create output folder {args.out!r}: {error}", file=sys.stderr)
        return 2
    preset_name, preset = choose_preset(args)
    env = describe(args.device)
    env["torchdiffeq"] = torchdiffeq_version()
    env["preset"] = {"name": preset_name, **asdict(preset)}
    print(
        f"anode_ext benchmark ({preset_name} sizes) on {env['device_name']} ({args.device}), torch "
        f"{env['torch_version']}, torchdiffeq {env['torchdiffeq'] or 'not installed'}",
        flush=True,
    )
    results: dict[str, Any] = {"environment": env}
    report = [
        "# anode_ext benchmark report",
        "",
        f"{env['device_name']} ({args.device}), {env['cpu_count']} CPUs, torch {env['torch_version']}, "
        f"torchdiffeq {env['torchdiffeq'] or 'not installed'}, {preset_name} sizes, {env['date']}.",
        "Times are medians of runs interleaved across the variants compared, with their spread "
        "(IQR: the interquartile range over the rounds, in percent of the median); memory is the bytes "
        "autograd holds for backward (parameters excluded).",
    ]
    started = time.perf_counter()
    for name in args.sections:
        start = time.perf_counter()
        print(f"[{name}] running ...", flush=True)
        data, title, table = SECTIONS[name](args, preset)
        print(f"[{name}] done in {time.perf_counter() - start:.0f} s\n\n{title}\n{table}\n", flush=True)
        results[name] = data
        report += ["", f"## {title}", "", table]
    results["seconds"] = time.perf_counter() - started
    report.insert(4, noise_summary(results))
    bad = non_finite(results)
    write_atomically(os.path.join(args.out, "results.json"), json.dumps(results, indent=2) + "\n")
    write_atomically(os.path.join(args.out, "report.md"), "\n".join(report) + "\n")
    print(f"wrote {args.out}/results.json, report.md and plots in {results['seconds']:.0f} s")
    if bad:
        print(f"anode-bench: non-finite figures at {', '.join(bad)}", file=sys.stderr)
        return 1
    return 0


def noise_summary(results: dict[str, Any]) -> str:
    """The report's line on how trustworthy its times are: how many were flagged noisy."""
    summaries = list(timing_summaries(results))
    flagged = sum(s["noisy"] for s in summaries)
    rerun = sum(s["reruns"] > 0 for s in summaries)
    return (
        f"Timing: {len(summaries)} timed rows; {rerun} needed a rerun; {flagged} flagged {NOISY_MARK} "
        f"(spread above {NOISE_THRESHOLD:.0%} after {MAX_RERUNS} reruns, read as approximate)."
    )


if __name__ == "__main__":
    sys.exit(main())
