"""What a recompute-on-backward needs so that it changes nothing about training.

- the random-number state of the forward (dropout draws the same numbers);
- the autocast state of the forward (the same precisions);
- module buffers left as the forward left them (BatchNorm running statistics and
  num_batches_tracked are updated once per training step, not once more by the
  recompute);
- the tensors func depends on, found without the user listing them.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
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

    def rng_now(self) -> RngState:
        """The generators' state at this moment, on the devices of this forward."""
        return RngState(self.cuda_devices)

    @contextlib.contextmanager
    def rng_replay(self) -> Iterator[None]:
        """Run the body with the generators as they were at capture; the caller's RNG
        state is restored afterwards."""
        with torch.random.fork_rng(devices=self.cuda_devices):
            self.rng.restore()
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


@contextlib.contextmanager
def buffers_unchanged() -> Iterator[None]:
    """Undo, on exit, every change this thread's module calls make to module buffers.

    A global forward pre-hook snapshots each module's own buffers the first time the
    module runs in the body, so this works whatever func is (a module, a closure
    over modules, a function using a global model).
    """
    thread = threading.get_ident()
    saved: dict[int, tuple[Tensor, Tensor]] = {}

    def snapshot(module: nn.Module, args: object) -> None:
        if threading.get_ident() != thread:
            return
        for buffer in module.buffers(recurse=False):
            if id(buffer) not in saved:
                saved[id(buffer)] = (buffer, buffer.detach().clone())

    handle = nn.modules.module.register_module_forward_pre_hook(snapshot)
    try:
        yield
    finally:
        handle.remove()
        with torch.no_grad():
            for buffer, copy in saved.values():
                buffer.copy_(copy)


def modules_of(func: Callable) -> list[nn.Module]:
    """Modules that func is or is bound to (a Module, a bound method, a partial)."""
    if isinstance(func, nn.Module):
        return [func]
    if inspect.ismethod(func) and isinstance(func.__self__, nn.Module):
        return [func.__self__]
    if isinstance(func, functools.partial):
        found = modules_of(func.func)
        found += [a for a in (*func.args, *func.keywords.values()) if isinstance(a, nn.Module)]
        return found
    return []


def graph_leaves(outputs: Sequence[Tensor]) -> list[Tensor]:
    """Every leaf tensor that requires grad and that `outputs` were computed from."""
    leaves: dict[int, Tensor] = {}
    seen: set[int] = set()
    stack = []
    for t in outputs:
        if t.grad_fn is not None:
            stack.append(t.grad_fn)
        elif t.requires_grad:
            leaves[id(t)] = t
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        variable = getattr(node, "variable", None)
        if isinstance(variable, Tensor):
            leaves[id(variable)] = variable
        for next_node, _ in node.next_functions:
            if next_node is not None:
                stack.append(next_node)
    return list(leaves.values())


def dependencies(
    func: Callable,
    probe_outputs: Sequence[Tensor],
    exclude: Sequence[Tensor],
    extra: Iterable[Tensor] = (),
) -> list[Tensor]:
    """The tensors requiring grad that func depends on, other than its state.

    The union of: the parameters of the module func is (or is bound to); the leaves
    of the graph of one evaluation (`probe_outputs`), which finds tensors captured by
    closures; and `extra`, tensors the caller names.
    """
    excluded = {id(t) for t in exclude}
    found: dict[int, Tensor] = {}
    for module in modules_of(func):
        for p in module.parameters():
            found.setdefault(id(p), p)
    for t in graph_leaves(probe_outputs):
        found.setdefault(id(t), t)
    for t in extra:
        if not isinstance(t, Tensor):
            raise TypeError(f"params must hold tensors, got {type(t).__name__}")
        found.setdefault(id(t), t)
    return [t for key, t in found.items() if key not in excluded and t.requires_grad]
