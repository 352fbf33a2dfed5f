"""What a benchmark ran on, recorded next to its figures."""

from __future__ import annotations

import datetime
import os
import platform
from typing import Any

import torch

from .._library import build_info


def best_device() -> str:
    """'cuda' when a GPU is usable, else 'cpu'."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def cpu_name() -> str:
    """The CPU model as the operating system reports it."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe(device: str) -> dict[str, Any]:
    """Device name, versions, build and CPU facts for a results file."""
    if torch.device(device).type == "cuda":
        name = torch.cuda.get_device_name(torch.device(device))
    else:
        name = cpu_name()
    return {
        "device": device,
        "device_name": name,
        "torch_version": torch.__version__,
        "build_info": build_info(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
