"""The compiled library shares torch's C++ runtime, whatever compiler builds it.

A compiler that links libstdc++ statically puts a second C++ runtime into _C.so; the
two do not share iostream locale facets, so formatting an integer into an error
message crashed the process on the GPU machine (bench/RESULTS.md, GPU section).
"""

import importlib.util
import os
import shutil
import subprocess
import sys

import pytest

import anode_ext._C

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
linux_with_readelf = pytest.mark.skipif(
    not sys.platform.startswith("linux") or shutil.which("readelf") is None, reason="needs Linux and readelf"
)
linux_with_nm = pytest.mark.skipif(
    not sys.platform.startswith("linux") or shutil.which("nm") is None, reason="needs Linux and nm"
)


def load_setup_helpers():
    spec = importlib.util.spec_from_file_location("anode_ext_setup", os.path.join(ROOT, "setup.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@linux_with_readelf
def test_compiled_library_names_a_shared_cxx_runtime():
    helpers = load_setup_helpers()
    needed = helpers.needed_libraries(anode_ext._C.__file__)
    assert needed, "readelf found no NEEDED entries in _C"
    assert helpers.has_shared_cxx_runtime(needed), needed


@linux_with_nm
def test_compiled_library_defines_none_of_the_runtimes_stream_machinery():
    assert load_setup_helpers().defined_runtime_internals(anode_ext._C.__file__) == []


@linux_with_nm
def test_a_static_copy_of_the_runtime_is_found():
    helpers = load_setup_helpers()
    if shutil.which("g++") is None:
        pytest.skip("needs g++")
    flags = ["-shared", "-fPIC"]
    shared = helpers.built_probe(["g++"], helpers.LIBSTDCXX_PROBE, flags, [], helpers.defined_runtime_internals)
    static = helpers.built_probe(["g++"], helpers.LIBSTDCXX_PROBE, flags, ["-static-libstdc++"],
                                 helpers.defined_runtime_internals)
    if static is None:
        pytest.skip("g++ cannot link libstdc++ statically here")
    assert shared == []
    assert any(name.startswith("_ZNSt6locale") for name in static), static[:5]


@pytest.fixture
def static_libstdcxx_compiler(tmp_path):
    """A g++ wrapper whose first library folder holds only libstdc++.a, like a relocated GCC."""
    gxx = shutil.which("g++")
    if gxx is None:
        pytest.skip("needs g++")
    archive = subprocess.run([gxx, "-print-file-name=libstdc++.a"], capture_output=True, text=True).stdout.strip()
    if not os.path.isabs(archive) or not os.path.exists(archive):
        pytest.skip("g++ has no libstdc++.a")
    lib = tmp_path / "lib"
    lib.mkdir()
    shutil.copy(archive, lib / "libstdc++.a")
    wrapper = tmp_path / "g++"
    wrapper.write_text(f'#!/bin/sh\nexec {gxx} -B{lib}/ "$@"\n')
    wrapper.chmod(0o755)
    return str(wrapper)


@linux_with_readelf
def test_static_libstdcxx_compiler_is_given_torchs_runtime(static_libstdcxx_compiler, monkeypatch):
    helpers = load_setup_helpers()
    assert helpers.links_cxx_runtime_shared([static_libstdcxx_compiler], []) is False
    monkeypatch.setenv("CXX", static_libstdcxx_compiler)
    args = helpers.cxx_runtime_link_args()
    assert len(args) == 1 and "libstdc++.so" in os.path.basename(args[0])
    assert helpers.links_cxx_runtime_shared([static_libstdcxx_compiler], args) is True
    # The shared runtime given first, nothing of the static one is linked in beside it.
    internals = helpers.built_probe([static_libstdcxx_compiler], helpers.LIBSTDCXX_PROBE, ["-shared", "-fPIC"],
                                    args, helpers.defined_runtime_internals)
    assert internals == []


@linux_with_readelf
def test_static_libstdcxx_without_a_shared_one_to_link_is_refused(static_libstdcxx_compiler, monkeypatch):
    helpers = load_setup_helpers()
    monkeypatch.setenv("CXX", static_libstdcxx_compiler)
    monkeypatch.setattr(helpers, "loaded_libstdcxx", lambda: None)
    with pytest.raises(RuntimeError, match=r"links libstdc\+\+ statically .*\(set CXX and CC"):
        helpers.cxx_runtime_link_args()


@linux_with_readelf
def test_ordinary_compiler_needs_no_extra_link_arguments(monkeypatch):
    if shutil.which("g++") is None:
        pytest.skip("needs g++")
    monkeypatch.setenv("CXX", "g++")
    assert load_setup_helpers().cxx_runtime_link_args() == []
