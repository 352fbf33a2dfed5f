"""Per-kernel registers, stack frame and spills of the CUDA sources, as ptxas reports them.

    python tools/ptxas_report.py [--arch 90] [FILE.cu ...]     (default: every csrc/cuda/*.cu)

Compiles each file for one architecture with the flags setup.py uses, against the torch
of the running Python, and prints one line per kernel. Needs a CUDA build of torch and
nvcc, no GPU. A stack frame is local memory per thread: the driver reserves it for every
resident thread, outside PyTorch's allocator.
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import shutil
import subprocess
import sys

import torch
from torch.utils import cpp_extension

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def include_dirs() -> list[str]:
    try:
        torch_dirs = cpp_extension.include_paths(device_type="cuda")
    except TypeError:  # torch < 2.6 names the argument cuda=
        torch_dirs = cpp_extension.include_paths(cuda=True)
    extra = []
    try:
        import nvidia

        for base in nvidia.__path__:
            extra += glob.glob(os.path.join(base, "*", "include"))
    except ImportError:
        pass
    return [os.path.join(ROOT, "csrc"), *torch_dirs, *sorted(extra)]


def compile_report(path: str, arch: str, nvcc: str) -> str:
    flags = ["-O3", "--fmad=false", "--expt-relaxed-constexpr", "-std=c++17", "-Xptxas", "-v",
             f"-gencode=arch=compute_{arch},code=sm_{arch}", "-c", path, "-o", os.devnull]
    flags += cpp_extension.COMMON_NVCC_FLAGS
    flags += [f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}", "-Xcompiler", "-fPIC"]
    for folder in include_dirs():
        flags += ["-isystem", folder]
    done = subprocess.run([nvcc, *flags], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"nvcc failed on {path}:\n{done.stderr[-4000:]}")
    return done.stderr


def demangle(names: list[str]) -> list[str]:
    if shutil.which("c++filt") is None:
        return names
    out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True).stdout
    return out.splitlines()


def kernels(report: str) -> list[dict]:
    found, current = [], None
    for line in report.splitlines():
        entry = re.search(r"Compiling entry function '(\w+)'", line)
        if entry:
            current = {"name": entry.group(1), "stack": 0, "spill_stores": 0, "registers": 0}
            found.append(current)
        elif current is not None:
            frame = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores", line)
            if frame:
                current["stack"], current["spill_stores"] = int(frame.group(1)), int(frame.group(2))
            regs = re.search(r"Used (\d+) registers", line)
            if regs:
                current["registers"] = int(regs.group(1))
    for k, pretty in zip(found, demangle([k["name"] for k in found])):
        k["name"] = pretty
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="90", help="compute capability without the dot (default 90)")
    parser.add_argument("files", nargs="*")
    args = parser.parse_args()
    nvcc = os.path.join(cpp_extension.CUDA_HOME or "", "bin", "nvcc")
    if not os.path.exists(nvcc):
        nvcc = shutil.which("nvcc") or sys.exit("nvcc not found; set CUDA_HOME to the toolkit root")
    files = args.files or sorted(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu")))
    for path in files:
        found = kernels(compile_report(path, args.arch, nvcc))
        print(f"{os.path.relpath(path, ROOT)}: {len(found)} kernels for sm_{args.arch}; "
              f"largest stack frame {max((k['stack'] for k in found), default=0)} B")
        for k in sorted(found, key=lambda k: -k["stack"]):
            print(f"  {k['stack']:6d} B stack  {k['spill_stores']:6d} B spilled  {k['registers']:3d} regs  {k['name'][:150]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
