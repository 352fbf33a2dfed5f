"""What the compiled library reports about its build, and the import-time torch check."""

import types

import pytest
import torch

import anode_ext
from anode_ext import _library


def test_build_info_describes_this_build():
    info = anode_ext.build_info()
    assert info["version"] == anode_ext.__version__
    assert info["torch_version"] == torch.__version__
    assert isinstance(info["openmp"], bool)
    has_cuda_kernel = torch._C._dispatch_has_kernel_for_dispatch_key("anode_ext::rk_combine", "CUDA")
    if info["cuda_version"] is None:
        assert info["cuda_arch_list"] == [] and not has_cuda_kernel
    else:
        assert info["cuda_arch_list"] and has_cuda_kernel


def test_every_op_has_a_cpu_kernel():
    ops = [n for n in torch._C._dispatch_get_all_op_names() if n.startswith("anode_ext::")]
    assert ops
    for op in ops:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(op, "CPU"), op


def test_library_built_against_another_torch_is_refused(monkeypatch):
    fake = types.SimpleNamespace(torch_version="1.0.0", cuda_version="", cuda_arch_list="", openmp=1)
    monkeypatch.setattr(_library.importlib, "import_module", lambda name: fake)
    with pytest.raises(ImportError, match=r"built against torch 1\.0\.0 but torch .* is installed.*--no-build-isolation"):
        _library.load()


def test_library_that_fails_to_load_explains_how_to_rebuild(monkeypatch):
    def broken(name):
        raise ImportError("undefined symbol: _ZN3c10")

    monkeypatch.setattr(_library.importlib, "import_module", broken)
    with pytest.raises(ImportError, match=r"could not be loaded \(undefined symbol.*pip install --no-build-isolation"):
        _library.load()
