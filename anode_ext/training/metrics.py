"""Per-epoch metrics: a JSON-lines file and a PNG of the training curves."""

from __future__ import annotations

import json
import os
import resource
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402


def peak_memory_bytes(device: torch.device) -> int:
    """Peak GPU memory allocated on a CUDA device; peak resident memory of the process otherwise."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def append_metrics(path: str, record: dict[str, Any]) -> None:
    """Append one JSON line (one epoch) and flush it to disk."""
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_metrics(path: str) -> list[dict[str, Any]]:
    """Every epoch recorded in a metrics file (none when it does not exist)."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_curves(records: list[dict[str, Any]], path: str) -> None:
    """Loss and accuracy against epoch, train and test, written atomically."""
    epochs = [r["epoch"] for r in records]
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(9, 3.5))
    loss_ax.plot(epochs, [r["train_loss"] for r in records], marker="o", label="train")
    loss_ax.plot(epochs, [r["test_loss"] for r in records], marker="o", label="test")
    loss_ax.set_xlabel("epoch")
    loss_ax.set_ylabel("cross-entropy")
    loss_ax.legend()
    acc_ax.plot(epochs, [100 * r["train_accuracy"] for r in records], marker="o", label="train")
    acc_ax.plot(epochs, [100 * r["test_accuracy"] for r in records], marker="o", label="test")
    acc_ax.set_xlabel("epoch")
    acc_ax.set_ylabel("accuracy (%)")
    acc_ax.legend()
    fig.tight_layout()
    tmp = os.path.join(os.path.dirname(os.path.abspath(path)), ".curves.tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, path)
