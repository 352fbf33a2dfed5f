"""Check that anode_ext was built with its CUDA kernels: they compiled, linked and loaded.

Runs without a GPU: it loads the library, asks the dispatcher for a CUDA kernel of
every op and lists the device code embedded for each requested architecture.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys

import torch

import anode_ext
from anode_ext import _library


def fail(message: str) -> None:
    print(f"check_cuda_build: FAILED: {message}", file=sys.stderr)
    raise SystemExit(1)


def find_cuobjdump() -> str | None:
    candidates = [shutil.which("cuobjdump")]
    if os.environ.get("CUDA_HOME"):
        candidates.append(os.path.join(os.environ["CUDA_HOME"], "bin", "cuobjdump"))
    candidates.append("/usr/local/cuda/bin/cuobjdump")
    # CUDA builds of torch depend on triton, which ships its own copy.
    triton = importlib.util.find_spec("triton")
    if triton is not None and triton.origin:
        candidates.append(os.path.join(os.path.dirname(triton.origin), "backends", "nvidia", "bin", "cuobjdump"))
    return next((c for c in candidates if c and os.path.exists(c)), None)


def main() -> int:
    info = anode_ext.build_info()
    print(f"build_info: {info}")
    if not info["cuda_version"]:
        fail("anode_ext was built without CUDA kernels")
    ops = sorted(n for n in torch._C._dispatch_get_all_op_names() if n.startswith("anode_ext::"))
    if not ops:
        fail("no anode_ext ops are registered")
    for op in ops:
        for key in ("CPU", "CUDA"):
            if not torch._C._dispatch_has_kernel_for_dispatch_key(op, key):
                fail(f"{op} has no {key} kernel")
    print(f"CPU and CUDA kernels registered for {len(ops)} ops: {', '.join(ops)}", flush=True)
    library = _library._C.__file__
    cuobjdump = find_cuobjdump()
    if cuobjdump is None:
        fail("cuobjdump not found (put the CUDA toolkit's bin on PATH or set CUDA_HOME)")
    listing = subprocess.run([cuobjdump, "--list-elf", library], capture_output=True, text=True, check=True).stdout
    embedded = sorted(set(re.findall(r"sm_(\d+)", listing)))
    wanted = sorted({a.replace(".", "").split("+")[0] for a in info["cuda_arch_list"]})
    print(f"device code embedded for sm_{', sm_'.join(embedded)}; requested sm_{', sm_'.join(wanted)}")
    missing = [a for a in wanted if a not in embedded]
    if missing:
        fail(f"no device code for sm_{', sm_'.join(missing)}")
    print("check_cuda_build: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
