"""PNG plots of the block benchmark, the reversibility demonstration, the adaptive solvers'
work against precision and the training sweep."""

from __future__ import annotations

import os
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

_METRICS = {
    "memory": ("saved_bytes_peak", "peak bytes saved for backward (MiB)", 2**20, "linear"),
    "time": ("seconds", "training-step time (ms)", 1e-3, "linear"),
    "grad_error": ("grad_error", "gradient error vs exact discrete gradient", 1.0, "log"),
}
# Exact zeros cannot be drawn on a log axis; they are drawn at this floor instead.
_ERROR_FLOOR = 1e-17


def _save(fig: plt.Figure, out_dir: str, name: str) -> str:
    """Lay out, write and close `fig` as out_dir/name; its path."""
    fig.tight_layout()
    path = os.path.join(out_dir, name)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_blocks(rows: list[dict[str, Any]], out_dir: str) -> list[str]:
    """One PNG per metric: a panel per (block, method), a line per solver, against Nt."""
    blocks = sorted({r["block"] for r in rows})
    methods = sorted({r["method"] for r in rows})
    solvers = list(dict.fromkeys(r["solver"] for r in rows))
    written = []
    for name, (key, label, unit, scale) in _METRICS.items():
        fig, axes = plt.subplots(
            len(blocks), len(methods), figsize=(4.2 * len(methods), 3.4 * len(blocks)), squeeze=False
        )
        for i, block in enumerate(blocks):
            for j, method in enumerate(methods):
                ax = axes[i][j]
                for solver in solvers:
                    points = sorted(
                        (r["steps"], r[key] / unit)
                        for r in rows
                        if r["block"] == block and r["method"] == method and r["solver"] == solver
                    )
                    if not points:
                        continue
                    xs = [p[0] for p in points]
                    ys = [max(p[1], _ERROR_FLOOR) if scale == "log" else p[1] for p in points]
                    ax.plot(xs, ys, marker="o", label=solver)
                ax.set_xscale("log", base=2)
                ax.set_yscale(scale)
                ax.set_title(f"{block} block, {method}")
                ax.set_xlabel("Nt (steps per block)")
                ax.set_ylabel(label)
        axes[0][0].legend(fontsize=7)
        written.append(_save(fig, out_dir, f"blocks_{name}.png"))
    return written


def plot_reversibility(rows: list[dict[str, Any]], out_dir: str) -> str:
    """Reconstruction error against Nt, a line per reconstruction and weight scale (the
    reversible method's inverse dashed, in the colour of the same scale)."""
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for i, scale in enumerate(sorted({r["weight_scale"] for r in rows})):
        for kind, style in (("reverse-time solve", "-"), ("reversible method's inverse", "--")):
            points = sorted((r["steps"], max(r["relative_error"], _ERROR_FLOOR)) for r in rows
                            if r["weight_scale"] == scale and r["reconstruction"] == kind)
            ax.plot([p[0] for p in points], [p[1] for p in points], style, marker="o", color=f"C{i}",
                    label=f"scale {scale:g}, {kind}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("Nt")
    ax.set_ylabel("relative error of x reconstructed backwards")
    ax.set_title("ReLU conv block: reversibility")
    ax.legend(fontsize=7)
    return _save(fig, out_dir, "reversibility.png")


def plot_work_precision(rows: list[dict[str, Any]], out_dir: str) -> str:
    """Error reached against func evaluations, a panel per problem, a line per library
    (one point per rtol)."""
    problems = list(dict.fromkeys(r["problem"] for r in rows))
    fig, axes = plt.subplots(1, len(problems), figsize=(4.6 * len(problems), 3.6), squeeze=False)
    for ax, problem in zip(axes[0], problems):
        for i, library in enumerate(dict.fromkeys(r["library"] for r in rows)):
            points = sorted((r["evaluations"], max(r["relative_error"], _ERROR_FLOOR)) for r in rows
                            if r["problem"] == problem and r["library"] == library)
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=7 - 2 * i,
                    label=library)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("func evaluations")
        ax.set_ylabel("relative error of y(t1)")
        ax.set_title(f"{problem}, dopri5")
    axes[0][0].legend(fontsize=7)
    return _save(fig, out_dir, "adaptive_work_precision.png")


def plot_training(summaries: list[dict[str, Any]], out_dir: str) -> list[str]:
    """Per model, one PNG: test accuracy (top) and train loss (bottom) against epoch, a
    panel per (method, Nt) with a line per gradient mode, and an ANODEv2 panel (coupled,
    uncoupled, plain); each line the mean over seeds with a band of one standard deviation."""
    written = []
    for model in dict.fromkeys(s["model"] for s in summaries):
        mine = [s for s in summaries if s["model"] == model]
        grids = list(dict.fromkeys((s["method"], s["steps"]) for s in mine if s["coupled"] == "none"
                                   and "plain" not in s["mode"]))
        panels = [(f"{method}, Nt={steps}", [s for s in mine if (s["method"], s["steps"]) == (method, steps)
                                              and s["coupled"] == "none" and "plain" not in s["mode"]], "mode")
                  for method, steps in grids]
        anodev2 = [s for s in mine if s["coupled"] != "none" or "plain" in s["mode"] or
                   (s["mode"] == "anode" and (s["method"], s["steps"]) == ("midpoint", 2))]
        panels.append(("ANODEv2 (midpoint, Nt=2)", anodev2, "label"))
        fig, axes = plt.subplots(2, len(panels), figsize=(3.6 * len(panels), 6.0), squeeze=False)
        for column, (title, shown, key) in enumerate(panels):
            for row, (metric, label, scale) in enumerate((("test_accuracy", "test accuracy (%)", 100.0),
                                                          ("train_loss", "train loss", 1.0))):
                ax = axes[row][column]
                for s in shown:
                    curve = s["curves"][metric]
                    if not curve:
                        continue
                    epochs = [p["epoch"] for p in curve]
                    mean = [p["mean"] * scale for p in curve]
                    std = [p["std"] * scale for p in curve]
                    name = s[key].replace(f"{model} ", "")
                    (line,) = ax.plot(epochs, mean, marker="o", markersize=3, label=name)
                    ax.fill_between(epochs, [m - d for m, d in zip(mean, std)], [m + d for m, d in zip(mean, std)],
                                    color=line.get_color(), alpha=0.2)
                ax.set_xlabel("epoch")
                ax.set_ylabel(label)
                if row == 0:
                    ax.set_title(f"{model}: {title}", fontsize=9)
                    ax.legend(fontsize=6)
        written.append(_save(fig, out_dir, f"training_{model}.png"))
    return written
