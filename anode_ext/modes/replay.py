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
import functools
import threading
import types
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


class BackendFlags:
    """The process-wide switches that choose kernels (oneDNN, cuDNN, the attention
    backends, TF32, deterministic algorithms), which a context around the forward alone
    (``sdpa_kernel``, ``torch.backends.mkldnn.flags``) sets differently for a backward
    outside it. Captured now; `apply` sets them and `restore` puts back the caller's."""

    _SDP = ("flash", "mem_efficient", "math", "cudnn")

    def __init__(self) -> None:
        cuda = torch.backends.cuda
        self.mkldnn = torch._C._get_mkldnn_enabled()
        self.cudnn = (torch.backends.cudnn.enabled, torch.backends.cudnn.benchmark,
                      torch.backends.cudnn.deterministic, torch.backends.cudnn.allow_tf32)
        self.sdp = tuple(getattr(cuda, f"{name}_sdp_enabled")() for name in self._SDP)
        self.matmul_tf32 = cuda.matmul.allow_tf32
        self.deterministic = (torch.are_deterministic_algorithms_enabled(),
                              torch.is_deterministic_algorithms_warn_only_enabled())

    def apply(self) -> None:
        cuda = torch.backends.cuda
        torch._C._set_mkldnn_enabled(self.mkldnn)
        cudnn = torch.backends.cudnn
        cudnn.enabled, cudnn.benchmark, cudnn.deterministic, cudnn.allow_tf32 = self.cudnn
        for name, enabled in zip(self._SDP, self.sdp):
            getattr(cuda, f"enable_{name}_sdp")(enabled)
        cuda.matmul.allow_tf32 = self.matmul_tf32
        torch.use_deterministic_algorithms(self.deterministic[0], warn_only=self.deterministic[1])

    def _values(self) -> tuple:
        return self.mkldnn, self.cudnn, self.sdp, self.matmul_tf32, self.deterministic

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BackendFlags) and self._values() == other._values()

    @contextlib.contextmanager
    def replayed(self) -> Iterator[None]:
        """Run the body with these switches, then put back the caller's. Nothing is set
        when they are the caller's already (setting them costs far more than reading)."""
        caller = BackendFlags()
        if caller == self:
            yield
            return
        self.apply()
        try:
            yield
        finally:
            caller.apply()


class ForwardState:
    """RNG, autocast and backend state captured when a forward pass starts, replayable later."""

    def __init__(self, tensors: Iterable[Tensor]) -> None:
        self.cuda_devices = cuda_rng_devices(tensors)
        self.rng = RngState(self.cuda_devices)
        self.autocast_state = [
            (kind, torch.is_autocast_enabled(kind), torch.get_autocast_dtype(kind))
            for kind in _AUTOCAST_DEVICE_TYPES
            if kind == "cpu" or torch.cuda.is_available()
        ]
        self.autocast_cache = torch.is_autocast_cache_enabled()
        self.backends = BackendFlags()
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
        autocast, as they do in a plain backward. The backend switches of the forward
        (BackendFlags) are replayed too.
        """
        with contextlib.ExitStack() as stack:
            stack.enter_context(self.backends.replayed())
            for kind, enabled, dtype in self.autocast_state:
                if enabled or torch.is_autocast_enabled(kind):  # else off then and now: nothing to set
                    stack.enter_context(
                        torch.autocast(kind, dtype=dtype, enabled=enabled, cache_enabled=self.autocast_cache)
                    )
            yield


BufferKey = tuple[int, str]
BufferValues = dict[BufferKey, Tensor]


class ModuleState:
    """The module state a forward solve runs with: buffers and train/eval flags.

    Modules are noted when the solve starts (the module tree of every module the user's
    func is, is bound to or closes over) and, while ``watch()`` is on, at their first
    call in this thread (any other module func reaches). Each buffer is noted as
    (module, name) with its value then, each module with its ``training`` flag.
    ``values()`` copies the current values, for positions inside the solve.
    """

    def __init__(self) -> None:
        self.thread = threading.get_ident()
        self.modules: dict[int, tuple[nn.Module, bool]] = {}
        self.buffers: dict[BufferKey, tuple[nn.Module, str]] = {}
        self.objects: dict[BufferKey, Tensor] = {}
        self.initial: BufferValues = {}

    def note_trees(self, roots: Iterable[nn.Module]) -> None:
        """Note every module in the trees of `roots`, as they are now."""
        for root in roots:
            for module in root.modules():
                self._note(module)

    @contextlib.contextmanager
    def watch(self) -> Iterator[None]:
        """Note every module that runs in the body (in this thread)."""
        handle = nn.modules.module.register_module_forward_pre_hook(self._first_use)
        try:
            yield
        finally:
            handle.remove()

    def _first_use(self, module: nn.Module, args: object) -> None:
        if id(module) not in self.modules and threading.get_ident() == self.thread:
            self._note(module)

    def _note(self, module: nn.Module) -> None:
        if id(module) in self.modules:
            return
        self.modules[id(module)] = (module, module.training)
        for name, buffer in module._buffers.items():
            if buffer is not None:
                key = (id(module), name)
                self.buffers[key] = (module, name)
                self.objects[key] = buffer
                self.initial[key] = buffer.detach().clone()

    def values(self) -> BufferValues:
        """The current values of every buffer noted so far."""
        return {key: self._current(key).detach().clone() for key in self.buffers}

    def values_since(self, previous: BufferValues | None) -> BufferValues:
        """values(), but each buffer whose value equals its value in `previous` (bit for
        bit) shares that copy: a solve that notes the buffers at every step holds one
        copy of those that do not change."""
        previous = previous or {}
        values = {}
        for key in self.buffers:
            now, before = self._current(key).detach(), previous.get(key)
            same = before is not None and before.dtype == now.dtype and before.shape == now.shape and \
                before.device == now.device and torch.equal(before, now)
            values[key] = before if same else now.clone()
        return values

    def _current(self, key: BufferKey) -> Tensor:
        module, name = self.buffers[key]
        return module._buffers[name]

    @contextlib.contextmanager
    def replay(self, values: BufferValues | None = None) -> Iterator[None]:
        """Run the body with the modules as the forward ran them: each buffer a fresh copy
        of its value in `values` (those it lacks, and all without `values`, as at the
        start of the solve), each module in the train/eval mode of the forward.
        Afterwards every module holds again the very buffer objects and mode it held
        before the body, with their values: what the recompute did goes.

        A buffer is replaced as an object, so a module that reassigns its buffer (an
        exponential average written ``self.b = 0.9 * self.b + ...``) replays as well as
        one that updates it in place; slots that held one tensor get one copy. A
        scripted module's buffers are copied into instead, and every original object gets
        its value back, also one the body changed through another reference
        (torch.func.functional_call with the module's own buffers, say).
        """
        values = values or {}
        held = {key: self._current(key) for key in self.buffers}
        before = {id(t): (t, t.detach().clone()) for t in held.values()}
        modes = {key: module.training for key, (module, _) in self.modules.items()}
        copies: dict[int, Tensor] = {}
        for key, (module, name) in self.buffers.items():
            value = values.get(key, self.initial[key])
            if isinstance(module, torch.jit.ScriptModule):
                held[key].data.copy_(value)
            else:
                shared = id(self.objects[key])
                if shared not in copies:
                    copies[shared] = value.clone()
                module._buffers[name] = copies[shared]
        for module, training in self.modules.values():
            if module.training != training:  # nn.Module.__setattr__ costs more than the test
                module.training = training
        try:
            yield
        finally:
            for key, (module, name) in self.buffers.items():
                if not isinstance(module, torch.jit.ScriptModule):
                    module._buffers[name] = held[key]
            for original, value in before.values():
                original.data.copy_(value)
            for key, (module, _) in self.modules.items():
                training = modes.get(key, module.training)
                if module.training != training:
                    module.training = training

    def restore_initial(self) -> None:
        """Give every noted module back the buffer object it held when noted, with the
        value it had then (undoing in-place updates and reassignments alike)."""
        for key, (module, name) in self.buffers.items():
            original = self.objects[key]
            original.data.copy_(self.initial[key])
            if not isinstance(module, torch.jit.ScriptModule):
                module._buffers[name] = original


@contextlib.contextmanager
def buffers_unchanged() -> Iterator[None]:
    """Undo, on exit, every change this thread's module calls make to module buffers
    (modules that run in the body are noted at their first call)."""
    state = ModuleState()
    try:
        with state.watch():
            yield
    finally:
        state.restore_initial()


def reachable(func: object, depth: int = 3) -> tuple[list[nn.Module], list[Tensor]]:
    """The modules and the tensors a callable is, is bound to, or holds: through bound
    methods, partials, closure cells, the globals its code names, the attributes of
    plain objects and the items of lists, tuples, sets and dicts, `depth` levels deep.

    The recompute replays the state of the modules' whole trees (also of a module whose
    forward started before the solve: a bound method of the model that calls odeint),
    and holds it against the tensors (with the modules' parameters) that they are the
    objects the forward used. Anything that cannot be inspected is skipped.
    """
    modules: dict[int, nn.Module] = {}
    tensors: dict[int, Tensor] = {}
    seen: set[int] = set()

    def visit(obj: object, level: int) -> None:
        if level < 0 or id(obj) in seen:
            return
        seen.add(id(obj))
        if isinstance(obj, Tensor):
            tensors.setdefault(id(obj), obj)
        elif isinstance(obj, nn.Module):
            modules.setdefault(id(obj), obj)
        elif isinstance(obj, (list, tuple, set, frozenset)):
            for item in obj:
                visit(item, level - 1)
        elif isinstance(obj, dict):
            for item in obj.values():
                visit(item, level - 1)
        elif isinstance(obj, functools.partial):
            for item in (obj.func, *obj.args, *obj.keywords.values()):
                visit(item, level - 1)
        elif not isinstance(obj, (type, types.ModuleType, str, bytes, int, float, complex, bool)):
            visit_callable_or_object(obj, level)

    def visit_callable_or_object(obj: object, level: int) -> None:
        self_ = getattr(obj, "__self__", None)
        if self_ is not None and not isinstance(self_, (type, types.ModuleType)):
            visit(self_, level - 1)
        function = getattr(obj, "__func__", obj)
        code = getattr(function, "__code__", None)
        if isinstance(code, types.CodeType):
            for cell in getattr(function, "__closure__", None) or ():
                try:
                    visit(cell.cell_contents, level - 1)
                except ValueError:  # an empty cell
                    pass
            names = getattr(function, "__globals__", None) or {}
            for name in code.co_names:
                if name in names:
                    visit(names[name], level - 1)
            return
        attributes = getattr(obj, "__dict__", None)
        if isinstance(attributes, dict):
            for value in list(attributes.values()):
                visit(value, level - 1)
        call = getattr(type(obj), "__call__", None)
        if isinstance(getattr(call, "__code__", None), types.CodeType):
            visit(types.MethodType(call, obj), level - 1)

    try:
        visit(func, depth)
    except Exception:  # an object whose attributes raise: what was found still counts
        pass
    found_tensors = list(tensors.values())
    for module in modules.values():
        found_tensors += list(module.parameters())
    return list(modules.values()), found_tensors


_HOOK_METHODS = ("register_hook", "register_post_accumulate_grad_hook")
_hook_patch_lock = threading.Lock()
_hook_patch_users = 0
_hook_originals: dict[str, Callable] = {}
_hooks_registered = threading.local()


def _tracked(name: str) -> Callable:
    original = _hook_originals[name]

    @functools.wraps(original)
    def register(self, hook):
        handle = original(self, hook)
        handles = getattr(_hooks_registered, "handles", None)
        if handles is not None:
            handles.append(handle)
        return handle

    return register


@contextlib.contextmanager
def hooks_registered_in_body_removed() -> Iterator[None]:
    """Remove, after the body, every tensor and gradient-accumulator hook registered in
    it by this thread. A func that registers a hook on a tensor from outside (a
    parameter, an earlier layer's output) at each call would register it again when
    re-run, and the hook would fire twice.

    Tensor.register_hook has no notification, so while some thread runs such a body the
    two registration methods are wrapped; the wrappers act for the threads in a body
    only, and the originals are back when no thread is in one.
    """
    global _hook_patch_users
    with _hook_patch_lock:
        if _hook_patch_users == 0:
            for name in _HOOK_METHODS:
                _hook_originals[name] = getattr(torch.Tensor, name)
                setattr(torch.Tensor, name, _tracked(name))
        _hook_patch_users += 1
    outer = getattr(_hooks_registered, "handles", None)
    _hooks_registered.handles = []
    try:
        yield
    finally:
        for handle in _hooks_registered.handles:
            handle.remove()
        _hooks_registered.handles = outer
        with _hook_patch_lock:
            _hook_patch_users -= 1
            if _hook_patch_users == 0:
                for name in _HOOK_METHODS:
                    setattr(torch.Tensor, name, _hook_originals.pop(name))


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
