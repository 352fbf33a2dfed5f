"""The benchmark report: runs every section, prints a summary and writes the results."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import torch

from .environment import best_device, describe
from .ops import format_rk4_table, rk4_combine_benchmark


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="anode-bench",
        description="Benchmark anode_ext's fused ops and write results.json and report.md.",
    )
    parser.add_argument("--out", default="bench_out", help="folder for results.json and report.md (default: %(default)s)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--numel", type=int, default=1 << 24, help="elements per tensor for the op benchmark (default: 2^24)")
    parser.add_argument("--repeats", type=int, default=11, help="timed repetitions per variant (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.numel < 1:
        parser.error(f"--numel must be at least 1, got {args.numel}")
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    args.device = args.device or best_device()
    if args.device not in ("cpu", "cuda"):
        parser.error(f"--device must be cpu or cuda, got {args.device!r}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda was asked for but no CUDA GPU is available")
    return args


def write_results(out: str, results: dict[str, Any], report: str) -> None:
    os.makedirs(out, exist_ok=True)
    for name, text in (("results.json", json.dumps(results, indent=2)), ("report.md", report)):
        tmp = os.path.join(out, name + ".tmp")
        with open(tmp, "w") as f:
            f.write(text + "\n")
        os.replace(tmp, os.path.join(out, name))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    env = describe(args.device)
    print(f"anode_ext benchmark on {env['device_name']} ({args.device}), torch {env['torch_version']}", flush=True)
    dtypes = [torch.float32, torch.bfloat16] if args.device == "cuda" else [torch.float32]
    rows = []
    for dtype in dtypes:
        print(f"  rk_combine RK4, {args.numel} {dtype} elements ...", flush=True)
        rows.append(rk4_combine_benchmark(args.numel, args.device, dtype, args.repeats))
    table = format_rk4_table(rows)
    report = "# anode_ext benchmark report\n\n## rk_combine (RK4 update)\n\n" + table
    write_results(args.out, {"environment": env, "rk4_combine": rows}, report)
    print("\n" + table + f"\n\nwrote {os.path.join(args.out, 'results.json')} and report.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
