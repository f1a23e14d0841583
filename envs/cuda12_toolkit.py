"""Assemble a CUDA 12 toolkit folder from package registries alone, for CI's CUDA 12 build check.

    python envs/cuda12_toolkit.py DEB_ROOT PIP_ROOT OUT

PyPI's `nvidia-cuda-nvcc-cu12` wheels carry ptxas and the crt headers but no nvcc; Debian ships NVIDIA's
nvcc, cicc, fatbinary, nvlink and libdevice in `nvidia-cuda-toolkit` (trixie non-free, CUDA 12.4). DEB_ROOT
is that package unpacked (`dpkg -x`), PIP_ROOT a `pip install --target` folder of envs/cuda12-requirements.txt.
OUT gets the usual toolkit layout (bin/, nvvm/libdevice, include/, lib64/) with an nvcc.profile of its own
(Debian's points at /usr), so nvcc finds every part relative to the path it is called by, as in a toolkit
from NVIDIA's installer; envs/cuda_home.py then adds cuBLAS/cuDNN/... as for any toolkit.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

PROFILE = """\
# jstyle (envs/cuda12_toolkit.py): every part relative to this folder
TOP = $(_HERE_)/..
NVVMIR_LIBRARY_DIR = $(TOP)/nvvm/libdevice
PATH += $(_HERE_):
INCLUDES += "-I$(TOP)/include" $(_SPACE_)
LIBRARIES =+ $(_SPACE_) "-L$(TOP)/lib64/stubs" "-L$(TOP)/lib64"
"""
DEB_TOOLS = ("bin2c", "cu++filt", "cudafe++", "cuobjdump", "fatbinary", "nvdisasm", "nvlink", "nvprune", "ptxas")


def assemble(deb: Path, pip: Path, out: Path) -> Path:
    """Build the toolkit at `out` (replaced whole, atomically); return it. Exits with one line on a missing part."""
    nv_bin = deb / "usr" / "lib" / "nvidia-cuda-toolkit" / "bin"
    libdevice = deb / "usr" / "lib" / "nvidia-cuda-toolkit" / "libdevice"
    nvidia = pip / "nvidia"
    includes = (nvidia / "cuda_nvcc" / "include", nvidia / "cuda_runtime" / "include", nvidia / "cuda_cccl" / "include")
    tools = [deb / "usr" / "bin" / t for t in DEB_TOOLS]
    needed = [nv_bin / "nvcc", nv_bin / "cicc", nv_bin / "crt", libdevice, *tools, *includes, includes[0] / "crt",
              nvidia / "cuda_runtime" / "lib"]
    missing = [str(p) for p in needed if not p.exists()]
    if missing:
        raise SystemExit(f"{__file__}: missing {missing[0]} (and {len(missing) - 1} more): unpack Debian's "
                         "nvidia-cuda-toolkit into DEB_ROOT and pip install envs/cuda12-requirements.txt into PIP_ROOT")
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for sub in ("bin", "nvvm", "include", "lib64"):
        (tmp / sub).mkdir(parents=True)
    shutil.copy2(nv_bin / "nvcc", tmp / "bin" / "nvcc")  # a copy: nvcc reads nvcc.profile beside its own file
    (tmp / "bin" / "nvcc.profile").write_text(PROFILE)
    for part in (nv_bin / "cicc", nv_bin / "crt", *tools):
        (tmp / "bin" / part.name).symlink_to(part.resolve())
    (tmp / "nvvm" / "libdevice").symlink_to(libdevice.resolve())
    for inc in includes:
        for entry in sorted(inc.iterdir()):
            if entry.name != "__init__.py" and not (tmp / "include" / entry.name).exists():
                (tmp / "include" / entry.name).symlink_to(entry.resolve())
    for lib in sorted((nvidia / "cuda_runtime" / "lib").iterdir()):
        if lib.name != "__init__.py":
            (tmp / "lib64" / lib.name).symlink_to(lib.resolve())
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out


def main(argv: list[str]) -> int:
    """CLI: assemble DEB_ROOT PIP_ROOT OUT."""
    if len(argv) != 3:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    out = assemble(Path(argv[0]), Path(argv[1]), Path(argv[2]))
    print(f"[envs] CUDA 12 toolkit assembled at {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
