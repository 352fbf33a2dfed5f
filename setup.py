"""Builds anode_ext and its compiled library anode_ext._C.

CPU kernels are always built, with OpenMP when the C++ compiler accepts -fopenmp.
CUDA kernels are built when torch is a CUDA build and a CUDA toolkit is found; no
GPU is needed at build time.

Environment:
  ANODE_EXT_FORCE_CUDA=1   a missing CUDA toolkit or CPU-only torch is an error
  ANODE_EXT_FORCE_CPU=1    skip the CUDA kernels
  CUDA_HOME                the toolkit root (the folder holding include/cuda_runtime.h)
  TORCH_CUDA_ARCH_LIST     CUDA architectures; default: the visible GPUs, else "8.0;9.0"
  MAX_JOBS                 parallel compile jobs (ninja)
  CXX                      the C++ compiler (default c++)
"""

import functools
import glob
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from typing import TypeVar

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_ARCH_LIST = "8.0;9.0"


def env_flag(name: str) -> bool:
    value = os.environ.get(name, "").strip().lower()
    if value in ("", "0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    raise RuntimeError(f"{name}={value!r} is not understood; expected 1 or 0")


T = TypeVar("T")

OPENMP_PROBE = """
#include <omp.h>
int main() { return omp_get_max_threads() > 0 ? 0 : 1; }
"""


def built_probe(compiler: list[str], text: str, flags: list[str], extra: list[str],
                inspect: Callable[[str], T]) -> T | None:
    """Build the C++ source `text` in a scratch folder, as `compiler flags probe.cpp extra -o
    probe`, and return inspect(path of what was built); None when the compiler cannot be
    run or does not build it."""
    with tempfile.TemporaryDirectory() as folder:
        source = os.path.join(folder, "probe.cpp")
        output = os.path.join(folder, "probe")
        with open(source, "w") as f:
            f.write(text)
        try:
            built = subprocess.run([*compiler, *flags, source, *extra, "-o", output], capture_output=True)
        except OSError:
            return None
        return inspect(output) if built.returncode == 0 else None


@functools.cache
def compiler_has_openmp() -> bool:
    """Whether the C++ compiler compiles and links OpenMP code with -fopenmp.

    Apple clang, and clang without libomp, do not. The build works without OpenMP:
    at::parallel_for then runs its loop on one thread and `#pragma omp` is ignored.
    """
    # The compiler torch.utils.cpp_extension compiles with (its get_cxx_compiler).
    compiler = shlex.split(os.environ.get("CXX", "c++"))
    accepted = built_probe(compiler, OPENMP_PROBE, ["-fopenmp"], [], lambda path: True) is not None
    if not accepted:
        print(
            f"anode_ext: {' '.join(compiler)} does not build OpenMP code with -fopenmp; "
            "building without OpenMP, so the CPU kernels run on one thread"
        )
    return accepted


LIBSTDCXX_PROBE = """
#include <sstream>
#include <string>
std::string format(unsigned long n) { std::ostringstream s; s << n; return s.str(); }
"""


def c_locale_env() -> dict[str, str]:
    """This process's environment in the C locale: binutils translate their output, and the
    patterns that read it expect the untranslated one."""
    env = {k: v for k, v in os.environ.items() if k not in ("LANGUAGE", "LC_ALL", "LC_MESSAGES", "LANG")}
    return {**env, "LC_ALL": "C"}


def needed_libraries(path: str) -> list[str] | None:
    """The shared libraries a Linux shared object names as NEEDED; None without readelf."""
    readelf = shutil.which("readelf")
    if readelf is None:
        print("anode_ext: readelf is not on PATH; the check that _C links a shared C++ runtime is skipped")
        return None
    result = subprocess.run([readelf, "-d", path], capture_output=True, text=True, env=c_locale_env())
    if result.returncode != 0:
        return None
    needed = re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", result.stdout)
    return needed or None  # a shared object names at least libc: none found means unreadable


# Symbols of the C++ runtime's locale and stream machinery: a shared object that defines
# them itself holds (part of) a static copy of the runtime, whose streams do not share
# locale facets with the libstdc++ torch loads (error messages crash).
RUNTIME_INTERNALS = ("_ZNSt6locale", "_ZNSt8ios_base")


def defined_runtime_internals(path: str) -> list[str] | None:
    """The RUNTIME_INTERNALS symbols a shared object defines itself; None without nm."""
    nm = shutil.which("nm")
    if nm is None:
        print("anode_ext: nm is not on PATH; the check that _C holds no copy of the C++ runtime is skipped")
        return None
    result = subprocess.run([nm, "-D", "--defined-only", path], capture_output=True, text=True, env=c_locale_env())
    if result.returncode != 0:
        return None
    names = [line.split()[-1] for line in result.stdout.splitlines() if line.split()]
    return [name for name in names if name.startswith(RUNTIME_INTERNALS)]


def has_shared_cxx_runtime(needed: list[str]) -> bool:
    return any(name.startswith(("libstdc++.so", "libc++.so")) for name in needed)


def links_cxx_runtime_shared(compiler: list[str], extra: list[str]) -> bool | None:
    """Whether a shared library built by compiler names a shared C++ runtime; None if unknown."""
    needed = built_probe(compiler, LIBSTDCXX_PROBE, ["-shared", "-fPIC"], extra, needed_libraries)
    return None if needed is None else has_shared_cxx_runtime(needed)


def loaded_libstdcxx() -> str | None:
    """The path of the libstdc++ this process has loaded (torch loads it), or None."""
    try:
        with open("/proc/self/maps") as f:
            paths = [line.split()[-1] for line in f if "libstdc++.so" in line]
    except OSError:
        return None
    return paths[0] if paths else None


def cxx_runtime_link_args() -> list[str]:
    """Link arguments that make _C.so use the shared libstdc++ torch uses.

    A compiler whose own library folder holds only libstdc++.a (a relocated GCC behind
    a wrapper script, as on the GPU machine, bench/RESULTS.md) links a private copy of
    the C++ runtime into _C.so. Two runtimes in one process do not share iostream
    locale facets, and the first integer an error message formatted crashed the
    process. Such a compiler is given the libstdc++ already loaded with torch; a
    compiler that cannot be made to link it shared is an error.
    """
    if not sys.platform.startswith("linux"):
        return []
    compiler = shlex.split(os.environ.get("CXX", "c++"))
    if links_cxx_runtime_shared(compiler, []) is not False:
        return []
    runtime = loaded_libstdcxx()
    if runtime is not None and links_cxx_runtime_shared(compiler, [runtime]):
        print(f"anode_ext: {' '.join(compiler)} links libstdc++ statically; linking {runtime}, the one torch loads")
        return [runtime]
    raise RuntimeError(
        f"{' '.join(compiler)} links libstdc++ statically into shared libraries, and a second C++ "
        "runtime beside torch's crashes the process; expected a compiler that links libstdc++.so "
        "(set CXX and CC, e.g. CXX=/usr/bin/g++ CC=/usr/bin/gcc)"
    )


def is_toolkit_root(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "include", "cuda_runtime.h")) and bool(
        glob.glob(os.path.join(path, "lib64", "libcudart.so*"))
        or glob.glob(os.path.join(path, "lib", "libcudart.so*"))
    )


def find_cuda_home() -> str | None:
    """Locates the CUDA toolkit root.

    torch guesses it from the nvcc on PATH, which may be a wrapper script outside
    the toolkit; follow symlinks and check each candidate for the runtime headers.
    """
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    nvcc = shutil.which("nvcc")
    if nvcc is not None:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
        with open(nvcc, "rb") as f:
            head = f.read(4096)
        if head.startswith(b"#!"):
            for target in re.findall(rb"(/\S+)/bin/nvcc", head):
                candidates.append(target.decode())
    candidates.append("/usr/local/cuda")
    for path in candidates:
        if path and is_toolkit_root(path):
            return os.path.realpath(path)
    return None


def nvidia_wheel_includes() -> list[str]:
    """Headers from torch's nvidia wheels (cuBLAS, cuSPARSE, ...) that
    ATen/cuda/CUDAContext.h needs but a bare toolkit may lack."""
    try:
        import nvidia
    except ImportError:
        return []
    found = []
    for base in nvidia.__path__:
        found += sorted(glob.glob(os.path.join(base, "cu*", "include")))
        found += sorted(glob.glob(os.path.join(base, "*", "include")))
    return sorted(set(p for p in found if os.path.isdir(p)))


def resolve_arch_list(torch) -> str:
    arch_list = os.environ.get("TORCH_CUDA_ARCH_LIST", "").strip()
    if not arch_list:
        if torch.cuda.is_available():
            caps = {torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())}
            arch_list = ";".join(f"{major}.{minor}" for major, minor in sorted(caps))
        else:
            arch_list = DEFAULT_ARCH_LIST
            print(f"anode_ext: no GPU visible, building for TORCH_CUDA_ARCH_LIST={arch_list}")
        os.environ["TORCH_CUDA_ARCH_LIST"] = arch_list
    return arch_list


def want_cuda(torch, cuda_home: str | None) -> bool:
    force_cuda = env_flag("ANODE_EXT_FORCE_CUDA")
    force_cpu = env_flag("ANODE_EXT_FORCE_CPU")
    if force_cuda and force_cpu:
        raise RuntimeError("ANODE_EXT_FORCE_CUDA and ANODE_EXT_FORCE_CPU are both set; set one")
    if force_cpu:
        return False
    problems = []
    if torch.version.cuda is None:
        problems.append(f"torch {torch.__version__} is not a CUDA build")
    if cuda_home is None:
        problems.append(
            "no CUDA toolkit found (set CUDA_HOME to the folder holding include/cuda_runtime.h)"
        )
    if problems and force_cuda:
        raise RuntimeError("ANODE_EXT_FORCE_CUDA=1 but " + "; ".join(problems))
    if problems:
        print("anode_ext: building CPU kernels only: " + "; ".join(problems))
    return not problems


def extensions():
    cuda_home = find_cuda_home()
    if cuda_home is not None and not env_flag("ANODE_EXT_FORCE_CPU"):
        # Must be set before torch.utils.cpp_extension is imported: it reads
        # CUDA_HOME once, at import.
        os.environ["CUDA_HOME"] = cuda_home
    import torch
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    with_cuda = want_cuda(torch, cuda_home)
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")))
    sources += sorted(glob.glob(os.path.join("csrc", "autograd", "*.cpp")))
    sources += sorted(glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    sources += sorted(glob.glob(os.path.join("csrc", "python", "*.cpp")))
    defines = [f'-DANODE_EXT_TORCH_VERSION="{torch.__version__}"']
    # No contraction of a*b+c into fma: the CPU and CUDA kernels then round the
    # same way and their results agree bit for bit.
    openmp = ["-fopenmp"] if compiler_has_openmp() else []
    cxx_flags = ["-O3", *openmp, "-ffp-contract=off", "-Wno-unknown-pragmas", "-Wno-psabi"]
    nvcc_flags = ["-O3", "--fmad=false", "--expt-relaxed-constexpr"]
    include_dirs = [os.path.join(ROOT, "csrc")]
    if with_cuda:
        arch_list = resolve_arch_list(torch)
        defines += [
            f'-DANODE_EXT_CUDA_VERSION="{torch.version.cuda}"',
            f'-DANODE_EXT_CUDA_ARCH_LIST="{arch_list}"',
        ]
        sources += sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
        # -isystem, not -I: the toolkit's own headers win; the wheels only fill gaps.
        for folder in nvidia_wheel_includes():
            cxx_flags += ["-isystem", folder]
            nvcc_flags += ["-isystem", folder]
        print(f"anode_ext: building CUDA kernels with CUDA_HOME={cuda_home}")
        make = CUDAExtension
        compile_args = {"cxx": cxx_flags + defines, "nvcc": nvcc_flags + defines}
    else:
        make = CppExtension
        compile_args = {"cxx": cxx_flags + defines}
    link_args = openmp + cxx_runtime_link_args()
    return [
        make(
            name="anode_ext._C",
            sources=sources,
            include_dirs=include_dirs,
            extra_compile_args=compile_args,
            extra_link_args=link_args,
        )
    ]


def build_ext_class():
    from torch.utils.cpp_extension import BuildExtension

    class BuildExt(BuildExtension):
        def finalize_options(self):
            super().finalize_options()
            if getattr(self, "editable_mode", False):
                # pip's editable builds use a fresh temporary folder each time; a
                # fixed one lets ninja recompile only the sources that changed.
                self.build_temp = os.path.join(ROOT, "build", "editable")

        def build_extensions(self):
            super().build_extensions()
            if not sys.platform.startswith("linux"):
                return
            for ext in self.extensions:
                path = self.get_ext_fullpath(ext.name)
                needed = needed_libraries(path) if os.path.exists(path) else None
                if needed is not None and not has_shared_cxx_runtime(needed):
                    raise RuntimeError(
                        f"{path} holds its own copy of the C++ runtime (it names no shared "
                        f"libstdc++ or libc++; it needs {', '.join(needed)}), which crashes beside "
                        "torch's; expected a compiler that links libstdc++.so (set CXX and CC)"
                    )
                internals = defined_runtime_internals(path) if os.path.exists(path) else None
                if internals:
                    raise RuntimeError(
                        f"{path} defines {len(internals)} symbols of the C++ runtime's locale and streams "
                        f"itself (such as {internals[0]}): part of a static libstdc++ was linked in beside "
                        "the shared one, and its streams crash beside torch's; expected a compiler whose "
                        "libstdc++ is shared (set CXX and CC, e.g. to /usr/bin/g++ and /usr/bin/gcc)"
                    )

    return BuildExt.with_options(use_ninja=True)


# Package metadata lives in pyproject.toml; this file only adds the compiled library.
# Build backends run this file as __main__; tests import its helpers without building.
if __name__ == "__main__":
    setup(ext_modules=extensions(), cmdclass={"build_ext": build_ext_class()})
