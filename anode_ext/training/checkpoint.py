"""Checkpoints written atomically, read without running code, and checked before a run
resumes from one."""

from __future__ import annotations

import os
import pickle
import re
from typing import Any

import torch

# The options that decide a model's parameters: a checkpoint cannot be resumed by a
# run that builds a different model.
ARCHITECTURE_KEYS = ("model", "width", "num_classes", "in_channels", "coupled", "q", "reaction")


def save_atomically(state: dict[str, Any], path: str) -> None:
    """Write `state` to `path` so that `path` always holds a complete checkpoint.

    The bytes go to a temporary file in the same folder, are flushed to disk, and only
    then renamed over `path`; an interrupted write leaves the old checkpoint intact.
    """
    folder = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    directory = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def load_checkpoint(path: str) -> dict[str, Any]:
    """Read a checkpoint written by save_atomically, or explain why it cannot be used.

    The file is read with ``torch.load(weights_only=True)``: only tensors and plain
    containers (dicts, lists, numbers, strings) are accepted, so a file from elsewhere
    cannot run code when it is read. A checkpoint is nothing else (RNG states are
    tensors, the configuration a dict of plain values).

    Raises:
        FileNotFoundError: no file at `path`.
        ValueError: the file is damaged, holds anything else (it is refused before that
            object is built), or is not a training checkpoint.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--resume {path}: no such file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        blocked = re.search(r"GLOBAL (\S+)", str(error))
        if blocked is None:
            raise ValueError(f"--resume {path}: not a readable checkpoint ({str(error).splitlines()[-1]})") from None
        raise ValueError(
            f"--resume {path}: refused: the file holds an object of type {blocked.group(1)}, not only tensors "
            "and plain containers, and reading it could run code; an anode_ext checkpoint holds none. If an "
            "older anode_ext wrote this file and you trust it, load it yourself with "
            "torch.load(weights_only=False) and save its dict again"
        ) from None
    except Exception as error:  # torch.load raises many types for a damaged file
        raise ValueError(f"--resume {path}: not a readable checkpoint ({type(error).__name__}: {error})") from None
    required = ("config", "model", "optimizer", "scheduler", "epoch", "batch", "rng")
    missing = [key for key in required if not isinstance(state, dict) or key not in state]
    if missing:
        raise ValueError(f"--resume {path}: not an anode_ext training checkpoint (missing {', '.join(missing)})")
    return state


def check_same_architecture(saved: dict[str, Any], current: dict[str, Any], path: str) -> None:
    """Refuse to resume a checkpoint of another model, naming what differs."""
    differences = [
        f"{key}={saved.get(key)!r} in the checkpoint but {current.get(key)!r} now"
        for key in ARCHITECTURE_KEYS
        if saved.get(key) != current.get(key)
    ]
    if differences:
        raise ValueError(f"--resume {path} was written for a different model: " + "; ".join(differences))
