"""Jittor's CUDA build compiles here against this machine's CUDA toolkit, with no GPU or driver (issue 20).

`bash envs/setup.sh cuda-build` builds Jittor's CUDA core and its extern ops (cuBLAS, cuDNN, cuRAND, cuFFT,
cuSPARSE, CUB) against the toolkit and the pinned pip libraries, in a JITTOR_HOME of its own
($JSTYLE_HOME/jittor-cuda-build; cold: many minutes, warm: seconds), in a subprocess so a crash cannot take
the suite down. Skipped, with the reason, where no nvcc exists.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXTERN = ("cublas", "cudnn", "curand", "cufft", "cusparse", "cub")


def _clean_env() -> dict[str, str]:
    """This process's env without the CUDA decisions env.sh exported, so the subprocess detects afresh."""
    env = dict(os.environ)
    for k in ("nvcc_path", "JSTYLE_CUDA_TOOLKIT", "JSTYLE_CUDA_DRIVER", "JSTYLE_CUDA_HOME", "JSTYLE_CUDA_NOTE"):
        env.pop(k, None)
    return env


def _sourced(expr: str) -> subprocess.CompletedProcess[str]:
    cmd = f'source "{ROOT}/envs/env.sh"; printf "%s" {expr}'
    return subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, env=_clean_env(), check=True)


@pytest.fixture(scope="module")
def toolkit() -> str:
    """The real toolkit env.sh found; skips where this machine has no nvcc at all."""
    cands = [shutil.which("nvcc"), os.path.join(os.environ.get("CUDA_HOME", "/nonexistent"), "bin", "nvcc"),
             "/usr/local/cuda/bin/nvcc"]
    if not any(c and os.access(c, os.X_OK) for c in cands):
        pytest.skip("no nvcc on this machine (PATH, CUDA_HOME, /usr/local/cuda): CUDA build not checked")
    tk = _sourced('"$JSTYLE_CUDA_TOOLKIT"').stdout
    assert tk and os.access(os.path.join(tk, "bin", "nvcc"), os.X_OK), f"envs/env.sh found no toolkit: {tk!r}"
    assert Path(tk, "bin", "nvcc").read_bytes()[:2] != b"#!", tk  # the real nvcc, not a wrapper script
    return tk


@pytest.fixture(scope="module", params=["cuda-build", "cuda12-build"])
def build(request: pytest.FixtureRequest) -> subprocess.CompletedProcess[str]:
    if request.param == "cuda-build":
        request.getfixturevalue("toolkit")  # this machine's toolkit: skipped where there is none
    proc = subprocess.run(["bash", str(ROOT / "envs" / "setup.sh"), request.param], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, env=_clean_env(), timeout=3600)
    if proc.returncode == 3:
        skip = [line for line in proc.stdout.splitlines() if "SKIP" in line]
        print(skip[-1] if skip else proc.stdout[-500:])
        pytest.skip(skip[-1] if skip else "set-up skipped the build")
    return proc


def test_cuda_core_and_extern_ops_build_without_a_gpu(build: subprocess.CompletedProcess[str]) -> None:
    out = build.stdout
    assert build.returncode == 0, out[-4000:]
    m = re.search(r"cuda-build: cache=(\S+) devices=(-?\d+) has_cuda=(\d) extern=(\S*)", out)
    assert m, out[-4000:]
    cache, devices, has_cuda, extern = Path(m.group(1)), int(m.group(2)), int(m.group(3)), m.group(4).split(",")
    assert cache.name.startswith("cu"), cache  # Jittor keyed this build by its nvcc version: the CUDA build
    if "cuda12-build" in build.args:
        assert cache.name.startswith("cu12.4"), cache  # CUDA 12.4's nvcc
        home = Path(re.search(r"CUDA home (\S+):", out).group(1))
        assert "#define CUDNN_MAJOR 8" in (home / "include" / "cudnn_version.h").read_text()  # cuDNN 8.9
    assert sorted(extern) == sorted(EXTERN)
    # the core, with an object nvcc compiled, and each extern library's ops
    assert list(cache.glob("jittor_core*.so")), cache
    assert (cache / "obj_files" / "nan_checker.cu.o").stat().st_size > 0
    assert (cache / "cuda" / "libcuda_extern.so").stat().st_size > 0
    libs = [p.name for p in (cache / "custom_ops").glob("*.so")]
    for name in EXTERN:
        assert any(f"{name}_" in lib for lib in libs), (name, libs)
    # a CUB kernel compiles with the nvcc flags Jittor JIT-compiles its CUDA kernels with (C++17 for CCCL)
    m = re.search(r"CUB kernel compiled with Jittor's nvcc flags: (\S+)", out)
    assert m and Path(m.group(1)).stat().st_size > 0, out[-2000:]
    # a Blackwell GPU gets its own arch (Jittor 1.3.11 clamped it to sm_90) where nvcc knows it (12.8+)
    nvcc = re.match(r"cu(\d+)\.(\d+)", cache.name)
    assert nvcc, cache
    if (int(nvcc.group(1)), int(nvcc.group(2))) >= (12, 8):
        m = re.search(r"sm_120 kernel: flags '(.*)', cubin arch \[(.*)\]", out)
        assert m and m.group(1).split() == ["-arch=compute_120", "-code=sm_120"], out[-2000:]
        assert m.group(2) == "'sm_120'", m.group(0)
    else:
        assert "sm_120 not checked" in out
    # no driver here: 0 devices, CPU fallback, use_cuda refused
    if subprocess.run(["bash", "-c", "nvidia-smi"], capture_output=True).returncode != 0:
        assert devices == 0 and has_cuda == 0
        assert "use_cuda=1 refused (no device): CPU fallback" in out


def test_env_sh_says_toolkit_without_driver_runs_on_cpu(toolkit: str) -> None:
    if subprocess.run(["bash", "-c", "nvidia-smi"], capture_output=True).returncode == 0:
        pytest.skip("a driver works here: Jittor gets CUDA")
    proc = _sourced('"[$nvcc_path]"')
    assert proc.stdout == "[]"  # Jittor sees no nvcc: the CPU build, exactly as before
    lines = [line for line in proc.stderr.splitlines() if "CUDA" in line]
    assert lines == [f"[envs] CUDA toolkit found ({toolkit}) but no working NVIDIA driver (nvidia-smi failed): "
                     "running on CPU"]


def _touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("x")


@pytest.mark.parametrize("layout", ["cu13", "cu12"])
def test_cuda_home_takes_libraries_from_pip_layouts(tmp_path: Path, layout: str) -> None:
    """envs/cuda_home.py on a fake toolkit: pip's cu13 and cu12 layouts, unversioned links, the toolkit first."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("cuda_home", ROOT / "envs" / "cuda_home.py")
    assert spec and spec.loader
    cuda_home = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cuda_home)
    tk = tmp_path / "cuda-13.0"
    for f in ("bin/nvcc", "nvvm/bin/cicc", "include/cuda_runtime.h", "lib64/libcudart.so.13"):
        _touch(tk / f)
    site = tmp_path / "venv" / "lib" / "python3.12" / "site-packages"
    _touch(tmp_path / "venv" / "pyvenv.cfg")
    _touch(tmp_path / "venv" / "include" / "stray.h")  # a venv's own include/ is never taken
    files = {"cublas": ("cublas_v2.h", "libcublas.so.13"), "cudnn": ("cudnn.h", "libcudnn.so.9"),
             "curand": ("curand.h", "libcurand.so.10"), "cufft": ("cufft.h", "libcufft.so.12"),
             "cusparse": ("cusparse.h", "libcusparse.so.12")}
    for name, (header, lib) in files.items():
        pkg = site / "nvidia" / ("cudnn" if name == "cudnn" or layout == "cu12" else "cu13")
        pkg = site / "nvidia" / name if layout == "cu12" else pkg
        _touch(pkg / "include" / header)
        _touch(pkg / "lib" / lib)
    _touch(site / "nvidia" / "cu13" / "include" / "cuda_runtime.h")  # pip's runtime header: the toolkit's wins
    _touch(site / "nvidia" / "cublas" / "lib" / "libcublas.so.12")  # another CUDA major's cuBLAS: refused
    _touch(site / "nvidia" / "cublas" / "include" / "cublas_api.h")
    out = tmp_path / "home"
    found = cuda_home.assemble(tk, out, [tmp_path / "venv"])
    assert sorted(found) == ["cuBLAS", "cuDNN", "cuFFT", "cuRAND", "cuSPARSE"]
    assert (out / "bin").resolve() == (tk / "bin").resolve() and (out / "nvvm").is_symlink()
    assert (out / "include" / "cuda_runtime.h").resolve() == (tk / "include" / "cuda_runtime.h").resolve()
    assert not (out / "include" / "stray.h").exists()
    for header, lib in files.values():
        assert (out / "include" / header).is_file()
        assert (out / "lib64" / lib.rsplit(".", 1)[0]).resolve().name == lib  # libcudnn.so -> libcudnn.so.9
    assert (out / "lib64" / "libcudart.so").resolve() == (tk / "lib64" / "libcudart.so.13").resolve()
    assert not (out / "lib64" / "libcublas.so.12").exists()
    assert cuda_home.assemble(tk, out, [tmp_path / "venv"]) == found  # unchanged inputs: kept as is
    (site / "nvidia" / "cudnn" / "include" / "cudnn.h").unlink()
    if Path("/usr/include/cudnn.h").is_file():
        return  # a system cuDNN would count
    with pytest.raises(SystemExit, match="cuDNN not found"):
        cuda_home.assemble(tk, tmp_path / "home2", [tmp_path / "venv"])


def test_env_sh_follows_nvcc_wrappers_and_gives_jittor_cuda_only_with_a_driver(tmp_path: Path) -> None:
    """env.sh's decision on fakes: a wrapper script on PATH, then a driver, then an assembled CUDA home."""
    tk = tmp_path / "toolkit-13.9"
    fake_nvcc = tk / "bin" / "nvcc"  # answers -dryrun the way nvcc does
    _touch(fake_nvcc)
    fake_nvcc.write_text('#!/bin/sh\necho "#\\$ _HERE_=$(cd "$(dirname "$0")" && pwd)" >&2\n')
    wrapper = tmp_path / "wrap" / "nvcc"
    _touch(wrapper)
    wrapper.write_text(f'#!/bin/sh\nexec "{fake_nvcc}" "$@"\n')
    smi = tmp_path / "driver" / "nvidia-smi"
    _touch(smi)
    smi.write_text("#!/bin/sh\nexit 0\n")
    for f in (fake_nvcc, wrapper, smi):
        f.chmod(0o755)

    def decide(path: str, prefix: str = "") -> tuple[list[str], str]:
        env = {"PATH": f"{path}:/usr/bin:/bin", "HOME": str(tmp_path), "JSTYLE_HOME": str(tmp_path / "jhome")}
        cmd = f'{prefix} source "{ROOT}/envs/env.sh"; printf "%s|%s|%s" "$nvcc_path" "$JSTYLE_CUDA_TOOLKIT" ' \
              '"$JSTYLE_CUDA_HOME"'
        proc = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, env=env, check=True)
        return proc.stdout.split("|"), proc.stderr

    real = os.path.realpath(tk)
    (nvcc_path, found, home), err = decide(str(wrapper.parent))
    assert (nvcc_path, found) == ("", real) and "no working NVIDIA driver" in err
    (nvcc_path, found, home), err = decide(f"{wrapper.parent}:{smi.parent}")
    assert (nvcc_path, found) == ("", real) and "run bash envs/setup.sh" in err
    Path(home).mkdir(parents=True)
    (Path(home) / ".jstyle-cuda-home").write_text("key\n")  # what envs/cuda_home.py leaves when done
    (nvcc_path, found, home), err = decide(f"{wrapper.parent}:{smi.parent}")
    assert nvcc_path == f"{home}/bin/nvcc" and "CUDA" not in err
    (nvcc_path, found, home), err = decide(f"{wrapper.parent}:{smi.parent}", 'export nvcc_path="";')
    assert (nvcc_path, found) == ("", "") and err == ""  # the user's nvcc_path="" wins: CPU, silently


def test_patch_jittor_applies_once_and_refuses_other_sources(tmp_path: Path) -> None:
    """envs/patch_jittor.py on a copy of the installed (patched) Jittor's files, un-patched back to 1.3.11's text."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("patch_jittor", ROOT / "envs" / "patch_jittor.py")
    assert spec and spec.loader
    pj = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pj)
    installed = pj.jittor_dir()
    assert pj.patch(installed, check=True) == []  # set-up patched this env's Jittor
    paths = sorted({ch.path for ch in pj.CHANGES})
    root = tmp_path / "jittor"  # (jittor_utils beside it)
    for path in paths:
        text = (installed / path).read_text()
        for ch in reversed(pj.CHANGES):
            if ch.path == path:
                text = text.replace(ch.new, ch.old)
        _touch(root / path)
        (root / path).write_text(text)
    assert len(pj.patch(root, check=True)) == len(pj.CHANGES)
    assert len(pj.patch(root)) == len(pj.CHANGES)
    for path in paths:
        assert (root / path).read_text() == (installed / path).read_text(), path
    assert pj.patch(root) == []  # a no-op once applied
    cc = root / "src" / "misc" / "cuda_flags.cc"
    cc.write_text(cc.read_text().replace("count = 0;", "count = 1;").replace("if (count==-1", "if (count<0"))
    with pytest.raises(SystemExit, match="expected source line not found in .*cuda_flags.cc"):
        pj.patch(root)
