"""Assemble the CUDA home Jittor builds against: the real toolkit plus cuBLAS/cuDNN/... wherever installed.

    python envs/cuda_home.py TOOLKIT OUT [LIB_ROOT ...]

Jittor 1.3.11 takes its CUDA home from nvcc_path (dirname of bin/) and looks for headers and libraries
only in <home>/include and <home>/lib64 (plus targets/ and /usr), by unversioned names (libcudnn.so),
while pip's nvidia-* packages ship versioned files in their own folders. OUT mirrors TOOLKIT (bin,
nvvm, targets, ... as links: nvcc finds its own parts relative to the path it was called by) except
include/ and lib64/, which hold links to the toolkit's files, then the libraries' files, plus an
unversioned link for every libX.so.N. Jittor then needs no search-path patches.

LIB_ROOT: a venv, a site-packages, an `nvidia` folder or a folder with include/ and lib/ (a cuDNN tar).
pip's cu13 layout (nvidia/cu13/{include,lib}) and cu12 layout (nvidia/<lib>/{include,lib}) both work.
The first root that has a file wins; a system cuDNN (/usr/include, /usr/lib/x86_64-linux-gnu) counts too.
Exits 1 with one line when cuBLAS, cuDNN, cuRAND, cuFFT or cuSPARSE is not found.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
import shutil
import sys
from pathlib import Path

# (what Jittor's extern ops need, header, library stem)
NEEDED = (("cuBLAS", "cublas_v2.h", "libcublas"), ("cuDNN", "cudnn.h", "libcudnn"),
          ("cuRAND", "curand.h", "libcurand"), ("cuFFT", "cufft.h", "libcufft"),
          ("cuSPARSE", "cusparse.h", "libcusparse"))


def cuda_major(toolkit: Path) -> int:
    """The toolkit's CUDA major version, from its libcudart.so.N (or version.json)."""
    for lib in sorted(glob.glob(str(toolkit / "lib*" / "libcudart.so.*")) +
                      glob.glob(str(toolkit / "targets" / "*" / "lib" / "libcudart.so.*"))):
        m = re.search(r"libcudart\.so\.(\d+)$", lib)
        if m:
            return int(m.group(1))
    m = re.search(r'"cuda"\s*:\s*\{[^}]*"version"\s*:\s*"(\d+)', (toolkit / "version.json").read_text()) \
        if (toolkit / "version.json").is_file() else None
    if m:
        return int(m.group(1))
    raise SystemExit(f"{__file__}: no libcudart.so.N under {toolkit}; is it a CUDA toolkit? set CUDA_HOME")


def lib_dirs(root: Path, major: int) -> list[tuple[Path, Path]]:
    """(include, lib) folder pairs under a library root, cu<major> layout first, then cu12-style per-lib folders."""
    venv = (root / "pyvenv.cfg").is_file()
    roots = [] if venv else [root]  # a venv: only its site-packages (never its or /usr's include/ and lib/)
    roots += sorted(Path(p) for p in glob.glob(str(root / "lib" / "python3*" / "site-packages")))
    pairs: list[tuple[Path, Path]] = []
    for r in roots:
        nv = r / "nvidia" if (r / "nvidia").is_dir() else r
        other_cudnn = [f"nvidia_cudnn_cu{m}" for m in (11, 12, 13) if m != major]
        skip_cudnn = any(glob.glob(str(r / f"{d}-*.dist-info")) for d in other_cudnn) and \
            not glob.glob(str(r / f"nvidia_cudnn_cu{major}-*.dist-info"))
        cands = [nv / f"cu{major}"] + sorted(p for p in nv.glob("*") if p.is_dir() and not p.name.startswith("cu1"))
        cands.append(r)
        for c in cands:
            if skip_cudnn and c.name == "cudnn":
                continue
            lib = c / "lib64" if (c / "lib64").is_dir() else c / "lib"
            if (c / "include").is_dir() and lib.is_dir():
                pairs.append((c / "include", lib))
    return pairs


def _link_all(src: Path, dst: Path, only_new: bool = True) -> None:
    for entry in sorted(src.iterdir()):
        target = dst / entry.name
        if only_new and (target.exists() or target.is_symlink()):
            continue
        target.symlink_to(entry.resolve() if entry.is_symlink() else entry)


def _major_ok(name: str, major: int) -> bool:
    """cuBLAS and the runtime carry the CUDA major in their soname: refuse another major's (cuBLAS 12 on CUDA 13)."""
    m = re.match(r"lib(cublas|cublasLt|cudart|nvJitLink)\.so\.(\d+)$", name)
    return m is None or int(m.group(2)) == major


def assemble(toolkit: Path, out: Path, roots: list[Path]) -> dict[str, str]:
    """Build (or rebuild, when its inputs changed) the CUDA home at `out`; return {library: where it was found}."""
    toolkit = toolkit.resolve()
    major = cuda_major(toolkit)
    pairs = [(toolkit / "include", toolkit / "lib64"), (toolkit / "targets" / "x86_64-linux" / "include",
                                                        toolkit / "targets" / "x86_64-linux" / "lib")]
    for root in roots:
        pairs += lib_dirs(root.resolve(), major)
    pairs = [(i, li) for i, li in pairs if i.is_dir() and li.is_dir()]
    key = hashlib.sha256(repr([str(toolkit)] + [str(p) for pr in pairs for p in pr]).encode()).hexdigest()[:16]
    stamp = out / ".jstyle-cuda-home"
    if stamp.is_file() and stamp.read_text().split("\n")[0] == key:
        return dict(line.split("=", 1) for line in stamp.read_text().split("\n")[1:] if "=" in line)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for entry in sorted(toolkit.iterdir()):
        if entry.name not in ("include", "lib64"):
            (tmp / entry.name).symlink_to(entry)
    (tmp / "include").mkdir()
    (tmp / "lib64").mkdir()
    found: dict[str, str] = {}
    for inc, lib in pairs:
        _link_all(inc, tmp / "include")
        for f in sorted(lib.iterdir()):
            t = tmp / "lib64" / f.name
            if f.name.startswith("lib") and ".so" in f.name and _major_ok(f.name, major) and not t.exists():
                t.symlink_to(f.resolve())
        for what, header, stem in NEEDED:
            if what not in found and (inc / header).is_file() and glob.glob(str(lib / f"{stem}.so*")):
                found[what] = str(lib)
    for so in sorted((tmp / "lib64").glob("lib*.so.*")):  # libcudnn.so.9 -> libcudnn.so (Jittor's and -l's names)
        m = re.match(r"(lib[\w+-]+\.so)\.\d+$", so.name)
        if m and not (tmp / "lib64" / m.group(1)).exists():
            (tmp / "lib64" / m.group(1)).symlink_to(so.name)
    for what, header, stem in NEEDED:  # a system install (deb/rpm): Jittor searches these folders itself
        for inc, lib in (("/usr/include", "/usr/lib/x86_64-linux-gnu"), ("/usr/include", "/usr/lib64")):
            if what not in found and os.path.isfile(f"{inc}/{header}") and os.path.isfile(f"{lib}/{stem}.so"):
                found[what] = lib
    missing = [what for what, _, _ in NEEDED if what not in found]
    if missing:
        shutil.rmtree(tmp)
        raise SystemExit(f"{__file__}: {', '.join(missing)} not found (headers + libraries) in {toolkit} or "
                         f"{[str(r) for r in roots]}; pip install -r envs/cuda{major}-requirements.txt "
                         "or set JSTYLE_CUDA_LIBS to a venv that has them")
    (tmp / ".jstyle-cuda-home").write_text(key + "\n" + "\n".join(f"{k}={v}" for k, v in found.items()) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return found


def main(argv: list[str]) -> int:
    """CLI: assemble TOOLKIT OUT [LIB_ROOT ...]; print what was found where."""
    if len(argv) < 2:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    found = assemble(Path(argv[0]), Path(argv[1]), [Path(a) for a in argv[2:] if a and Path(a).is_dir()])
    print(f"[envs] CUDA home {argv[1]}: " + ", ".join(f"{k} from {v}" for k, v in found.items()), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
