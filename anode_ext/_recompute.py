"""What a recompute-on-backward needs so that it changes nothing about training.

- the random-number state of the forward (dropout draws the same numbers);
- the autocast state of the forward (the same precisions);
- module buffers as the forward had them at each recomputed evaluation, and as they
  were before the recompute once it is done (BatchNorm running statistics and
  num_batches_tracked are updated once per training step, a power-iteration vector is
  what it was when the forward used it);
- saved-tensor hooks of the caller (memory accounting, offloading) applied to what the
  recompute keeps for the backward.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence

import torch
from torch import Tensor, nn

_AUTOCAST_DEVICE_TYPES = ("cpu", "cuda")


class RngState:
    """The CPU generator and the generators of some CUDA devices, captured now."""

    def __init__(self, cuda_devices: Sequence[int]) -> None:
        self.cuda_devices = list(cuda_devices)
        self.cpu = torch.get_rng_state()
        self.cuda = [torch.cuda.get_rng_state(d) for d in self.cuda_devices]

    def restore(self) -> None:
        """Put the generators back where they were when this state was captured."""
        torch.set_rng_state(self.cpu)
        for device, state in zip(self.cuda_devices, self.cuda):
            torch.cuda.set_rng_state(state, device)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, RngState)
            and self.cuda_devices == other.cuda_devices
            and torch.equal(self.cpu, other.cpu)
            and all(torch.equal(a, b) for a, b in zip(self.cuda, other.cuda))
        )


def cuda_rng_devices(tensors: Iterable[Tensor]) -> list[int]:
    """The CUDA devices whose generators a recompute must replay.

    Every initialized device, not only those of the state and parameters: func may
    draw random numbers on any device (dropout on another GPU than its input). When
    CUDA is not initialized yet, nothing is captured (initializing it here would take
    GPU memory in CPU-only programs): a func that is the first code to touch CUDA and
    draws random numbers there gets different draws in its recompute.
    """
    devices = {t.device.index or 0 for t in tensors if t.is_cuda}
    if torch.cuda.is_initialized():
        devices.update(range(torch.cuda.device_count()))
    return sorted(devices)


class ForwardState:
    """RNG and autocast state captured when a forward pass starts, replayable later."""

    def __init__(self, tensors: Iterable[Tensor]) -> None:
        self.cuda_devices = cuda_rng_devices(tensors)
        self.rng = RngState(self.cuda_devices)
        self.autocast_state = [
            (kind, torch.is_autocast_enabled(kind), torch.get_autocast_dtype(kind))
            for kind in _AUTOCAST_DEVICE_TYPES
            if kind == "cpu" or torch.cuda.is_available()
        ]
        self.autocast_cache = torch.is_autocast_cache_enabled()
        self.draws = True

    def forward_done(self) -> None:
        """Note whether the forward drew random numbers. If it drew none, the recompute
        draws none either and leaves the generators alone: the process-wide generators
        are then never touched from a backward, which keeps other threads' random
        streams (and so concurrent solves) undisturbed."""
        self.draws = self.rng_now() != self.rng

    def rng_now(self) -> RngState:
        """The generators' state at this moment, on the devices of this forward."""
        return RngState(self.cuda_devices)

    @contextlib.contextmanager
    def rng_replay(self, rng: RngState | None = None) -> Iterator[None]:
        """Run the body with the generators as they were at capture (or as `rng` holds
        them); the caller's RNG state is restored afterwards."""
        if not self.draws:
            yield
            return
        with torch.random.fork_rng(devices=self.cuda_devices):
            (rng or self.rng).restore()
            yield

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        """Run the body under the autocast state of the forward.

        Only recomputed forward work goes in here: backward formulas must run outside
        autocast, as they do in a plain backward.
        """
        with contextlib.ExitStack() as stack:
            for kind, enabled, dtype in self.autocast_state:
                stack.enter_context(
                    torch.autocast(kind, dtype=dtype, enabled=enabled, cache_enabled=self.autocast_cache)
                )
            yield


BufferValues = dict[int, Tensor]


class BufferLog:
    """The module buffers a forward solve uses, with their values along the way.

    While ``watch()`` is on, a module forward pre-hook notes each module's own buffers
    the first time the module runs in this thread, with the value they have then: the
    value at the start of the solve, whatever func is (a module, a closure over
    modules, a function using a global model). ``values()`` copies the current values
    of the buffers seen so far, for positions inside the solve.
    """

    def __init__(self) -> None:
        self.thread = threading.get_ident()
        self.buffers: dict[int, Tensor] = {}
        self.initial: BufferValues = {}

    @contextlib.contextmanager
    def watch(self) -> Iterator[None]:
        """Note the buffers of every module that runs in the body."""
        handle = nn.modules.module.register_module_forward_pre_hook(self._first_use)
        try:
            yield
        finally:
            handle.remove()

    def _first_use(self, module: nn.Module, args: object) -> None:
        if not module._buffers or threading.get_ident() != self.thread:
            return
        for buffer in module._buffers.values():
            if buffer is not None and id(buffer) not in self.buffers:
                self.buffers[id(buffer)] = buffer
                self.initial[id(buffer)] = buffer.detach().clone()

    def values(self) -> BufferValues:
        """The current values of every buffer seen so far."""
        return {key: buffer.detach().clone() for key, buffer in self.buffers.items()}

    @contextlib.contextmanager
    def replay(self, values: BufferValues | None = None) -> Iterator[None]:
        """Run the body with the buffers as `values` holds them (those it lacks, and
        all without `values`, as they were at the start of the solve); afterwards put
        back what they held before the body.

        Written through ``.data`` so that neither change bumps a version counter:
        saved-tensor checks elsewhere in the graph see no modification, as there is
        none once the body is over.
        """
        before = self.values()
        values = values or {}
        self._load({key: values.get(key, self.initial[key]) for key in self.buffers})
        try:
            yield
        finally:
            self._load(before)

    def _load(self, values: BufferValues) -> None:
        for key, value in values.items():
            self.buffers[key].data.copy_(value)


@contextlib.contextmanager
def buffers_unchanged() -> Iterator[None]:
    """Undo, on exit, every change this thread's module calls make to module buffers."""
    log = BufferLog()
    with log.watch():
        try:
            yield
        finally:
            log._load(log.initial)


class CallerHooks:
    """The saved-tensor hooks in effect when a recompute starts (the caller's memory
    accounting or offloading), applied to what the recompute keeps for the backward,
    as autograd would apply them to a plain forward's saved tensors."""

    def __init__(self) -> None:
        top = getattr(torch._C._autograd, "_top_saved_tensors_default_hooks", None)
        hooks = top(True) if top is not None else None
        self.pack: Callable[[Tensor], object] | None = hooks[0] if hooks else None
        self.unpack: Callable[[object], Tensor] | None = hooks[1] if hooks else None

    def keep(self, t: Tensor) -> object:
        return t if self.pack is None else self.pack(t)

    def restore(self, packed: object) -> Tensor:
        return packed if self.unpack is None else self.unpack(packed)
