"""The benchmark report: runs each section, prints a summary and writes the results."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

from .environment import best_device, describe
from .ops import format_rk4_table, rk4_combine_benchmark
from .overhead import format_overhead, overhead_benchmark
from .revolve_table import format_revolve_table, revolve_table

Section = Callable[[argparse.Namespace], tuple[Any, str, str]]


def ops_section(args: argparse.Namespace) -> tuple[Any, str, str]:
    dtypes = [torch.float32, torch.bfloat16] if args.device == "cuda" else [torch.float32]
    rows = [rk4_combine_benchmark(args.numel, args.device, dtype, args.repeats) for dtype in dtypes]
    return rows, "rk_combine: the fused RK4 update against eager PyTorch and the memory floor", format_rk4_table(rows)


def overhead_section(args: argparse.Namespace) -> tuple[Any, str, str]:
    result = overhead_benchmark(args.repeats)
    return result, "Per-call overhead (CPU): what decided the C++ autograd kernels", format_overhead(result)


def revolve_section(args: argparse.Namespace) -> tuple[Any, str, str]:
    rows = revolve_table()
    title = "Revolve against anode: peak bytes saved for backward and func evaluations (Euler, conv block)"
    return rows, title, format_revolve_table(rows)


SECTIONS: dict[str, Section] = {
    "ops": ops_section,
    "overhead": overhead_section,
    "revolve": revolve_section,
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="anode-bench",
        description="Benchmark anode_ext and write results.json and report.md.",
    )
    parser.add_argument("--out", default="bench_out", help="folder for results.json and report.md (default: %(default)s)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument(
        "--sections",
        default=",".join(SECTIONS),
        help=f"comma-separated sections to run, from {', '.join(SECTIONS)} (default: all)",
    )
    parser.add_argument("--numel", type=int, default=1 << 24, help="elements per tensor for the op benchmark (default: 2^24)")
    parser.add_argument("--repeats", type=int, default=11, help="timed repetitions per variant (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.numel < 1:
        parser.error(f"--numel must be at least 1, got {args.numel}")
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in args.sections if s not in SECTIONS]
    if unknown or not args.sections:
        parser.error(f"unknown section(s) {', '.join(unknown) or '(none given)'}; expected some of {', '.join(SECTIONS)}")
    args.device = args.device or best_device()
    if args.device not in ("cpu", "cuda"):
        parser.error(f"--device must be cpu or cuda, got {args.device!r}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda was asked for but no CUDA GPU is available")
    return args


def write_atomically(path: str, text: str) -> None:
    """Write `text` to `path` through a temporary file, so a reader never sees half a file."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        os.makedirs(args.out, exist_ok=True)
    except OSError as error:
        print(f"anode-bench: cannot create output folder {args.out!r}: {error}", file=sys.stderr)
        return 2
    env = describe(args.device)
    print(f"anode_ext benchmark on {env['device_name']} ({args.device}), torch {env['torch_version']}", flush=True)
    results: dict[str, Any] = {"environment": env}
    report = ["# anode_ext benchmark report", "", f"Device: {env['device_name']} ({args.device}), "
              f"torch {env['torch_version']}, {env['cpu_count']} CPUs, {env['date']}."]
    for name in args.sections:
        start = time.perf_counter()
        print(f"[{name}] running ...", flush=True)
        data, title, table = SECTIONS[name](args)
        print(f"[{name}] done in {time.perf_counter() - start:.1f} s\n\n{title}\n{table}\n", flush=True)
        results[name] = data
        report += ["", f"## {title}", "", table]
    write_atomically(os.path.join(args.out, "results.json"), json.dumps(results, indent=2) + "\n")
    write_atomically(os.path.join(args.out, "report.md"), "\n".join(report) + "\n")
    print(f"wrote {os.path.join(args.out, 'results.json')} and {os.path.join(args.out, 'report.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
