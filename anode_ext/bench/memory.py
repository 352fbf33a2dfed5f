"""Bytes saved for backward: an exact, device-independent memory measure."""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterable, Iterator

import torch
from torch import Tensor


class _Saved:
    """What autograd holds in place of a saved tensor while counting is on; it lives
    exactly as long as the graph node that saved it."""

    __slots__ = ("tensor", "__weakref__")

    def __init__(self, tensor: Tensor) -> None:
        # Detached: holding the tensor itself would tie a saved output to its own
        # grad_fn in a cycle that no collector can see, and keep the graph alive.
        self.tensor = tensor.detach()


class SavedBytes:
    """Live accounting of the storages autograd holds for backward, in bytes.

    A saved tensor counts the whole storage it views (``untyped_storage().nbytes()``); a
    storage saved by several graph nodes counts once, and stops counting when the last
    node holding it is freed. Meta tensors and the storages of `exclude` (tensors) do
    not count.

    Attributes:
        current: bytes held now.
        peak: the most bytes held at any moment since construction.
    """

    def __init__(self, exclude: Iterable[Tensor]) -> None:
        self._excluded = {self._key(t) for t in exclude}
        self._holders: dict[int, int] = {}
        self._sizes: dict[int, int] = {}
        self.current = 0
        self.peak = 0

    @staticmethod
    def _key(t: Tensor) -> int:
        return t.untyped_storage().data_ptr()

    def pack(self, t: Tensor) -> _Saved:
        """The pack hook of ``torch.autograd.graph.saved_tensors_hooks``: count `t`'s
        storage and return what autograd holds instead of `t`."""
        saved = _Saved(t)
        if t.device.type == "meta":
            return saved
        key = self._key(t)
        if key in self._excluded:
            return saved
        if key not in self._holders:
            self._holders[key] = 0
            self._sizes[key] = t.untyped_storage().nbytes()
            self.current += self._sizes[key]
            self.peak = max(self.peak, self.current)
        self._holders[key] += 1
        weakref.finalize(saved, self._release, key)
        return saved

    def _release(self, key: int) -> None:
        self._holders[key] -= 1
        if self._holders[key] == 0:
            self.current -= self._sizes.pop(key)
            del self._holders[key]

    @property
    def total(self) -> int:
        """Bytes held for backward now (``current``)."""
        return self.current


@contextlib.contextmanager
def count_saved_bytes(exclude: Iterable[Tensor] = ()) -> Iterator[SavedBytes]:
    """Track the bytes autograd saves for backward in the body, on any device.

    Read ``.total`` after a forward for what the graph holds; ``.peak`` after the
    backward for the most held at any moment (recomputed graphs included). Storages
    of `exclude` (typically the model's parameters, which are held anyway) are not
    counted.

    Args:
        exclude: tensors whose storages are not counted.

    Yields:
        The SavedBytes counter, which keeps counting the graph's releases after the
        body ends.
    """
    counter = SavedBytes(exclude)
    with torch.autograd.graph.saved_tensors_hooks(counter.pack, lambda saved: saved.tensor):
        yield counter
