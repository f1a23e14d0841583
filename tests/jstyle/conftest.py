"""Shared fixtures for the Jittor-side tests (run in the jstyle env).

Reference outputs come from diffusers/transformers, computed by tests/reference/make_tiny.py in
the checker env (a separate process: torch never enters the jstyle env) and cached per machine,
keyed by the script's hash.

JSTYLE_TEST_DEVICE=cuda runs every test with Jittor on CUDA (jt.flags.use_cuda = 1 for the session; the
references stay diffusers' on the checker env's device); unset or `cpu`, the default, runs on CPU.
bench/gpu_check.sh uses it for the parity tests on a GPU.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
MAKE_TINY = ROOT / "tests" / "reference" / "make_tiny.py"
SERVE = ROOT / "tests" / "reference" / "serve.py"


def jstyle_test_device() -> str:
    """JSTYLE_TEST_DEVICE: 'cpu' (default) or 'cuda'."""
    device = os.environ.get("JSTYLE_TEST_DEVICE", "cpu") or "cpu"
    if device not in ("cpu", "cuda"):
        raise pytest.UsageError(f"JSTYLE_TEST_DEVICE={device!r}: use cpu or cuda")
    return device


@pytest.fixture(scope="session", autouse=True)
def jittor_device():
    """Point Jittor at JSTYLE_TEST_DEVICE for the whole session (CUDA fails the session when Jittor has none)."""
    device = jstyle_test_device()
    if device == "cpu":
        yield device
        return
    import jittor as jt

    if not jt.has_cuda:
        pytest.exit("JSTYLE_TEST_DEVICE=cuda but Jittor has no CUDA here (run bash envs/setup.sh on a machine "
                    "with a CUDA toolkit and driver, or unset JSTYLE_TEST_DEVICE)", returncode=3)
    jt.flags.use_cuda = 1
    yield device
    jt.flags.use_cuda = 0


def checker_python() -> str:
    exe = os.environ.get("JSTYLE_CHECKER_PYTHON")
    if not exe or not Path(exe).exists():
        pytest.fail(
            "reference outputs need the checker env: run `bash tests/run.sh`, or set "
            "JSTYLE_CHECKER_PYTHON to its python (created by `bash envs/setup.sh checker`)"
        )
    return exe


def cache_dir(tmp_path_factory, name: str) -> Path:
    """Per-machine cache for reference outputs: $JSTYLE_HOME/test-cache/<name>, else pytest's tmp."""
    home = os.environ.get("JSTYLE_HOME")
    return (Path(home) / "test-cache" if home else tmp_path_factory.getbasetemp()) / name


class ReferenceServer:
    """One checker-env process (tests/reference/serve.py) that runs every reference script of the session,
    so torch and diffusers are imported once, not once per script (seconds each on 2 cores)."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.log = None

    def run(self, request: dict) -> dict:
        if self.proc is None or self.proc.poll() is not None:
            self.log = tempfile.TemporaryFile(mode="w+")  # its C-level output (torch warnings, crashes)
            self.proc = subprocess.Popen([checker_python(), str(SERVE)], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=self.log, text=True,
                                         env={**os.environ, "PYTHONPATH": "", "HF_HUB_OFFLINE": "1"})
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if line:
            return json.loads(line)
        self.log.seek(0)
        return {"rc": self.proc.wait(), "stdout": "", "stderr": "reference process died:\n" + self.log.read()[-4000:]}

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=60)


_SERVER = ReferenceServer()
atexit.register(_SERVER.close)


def run_reference(script: Path | None, *args: str, code: str | None = None) -> str:
    """Run a tests/reference script (or `python -c code`) in the checker env; returns its stdout.
    A failure fails the test with its output."""
    reply = _SERVER.run({"script": str(script), "args": list(args)} if script else {"code": code, "args": list(args)})
    if reply["rc"] != 0:
        sys.stderr.write(reply["stdout"][-4000:] + reply["stderr"][-4000:])
        name = script.name if script else "a -c script"
        pytest.fail(f"{name} {' '.join(args[:1])} failed in the checker env (exit {reply['rc']})")
    return reply["stdout"]


def reference_npz(script: Path, name: str, key: bytes, inputs: dict, model: Path, tmp_path_factory) -> dict:
    """`script MODEL IN.npz OUT.npz` run once per (script, key) and cached; returns OUT's arrays."""
    digest = hashlib.sha256(script.read_bytes() + key).hexdigest()[:12]
    folder = cache_dir(tmp_path_factory, f"{name}-{digest}")
    out = folder / "out.npz"
    if not out.exists():
        folder.mkdir(parents=True, exist_ok=True)
        np.savez(folder / "in.npz", **inputs)
        run_reference(script, str(model), str(folder / "in.npz"), str(folder / "tmp.npz"))
        os.replace(folder / "tmp.npz", out)
    with np.load(out) as f:
        return dict(f)


@pytest.fixture(scope="session")
def tiny_ref(tmp_path_factory) -> Path:
    """Folder with sd1/, sd2/ (diffusers format), {sd1,sd2}_refs.npz and tokenizer_refs.json."""
    out = cache_dir(tmp_path_factory, f"tiny-{hashlib.sha256(MAKE_TINY.read_bytes()).hexdigest()[:12]}")
    if not (out / "DONE").exists():
        out.mkdir(parents=True, exist_ok=True)
        run_reference(MAKE_TINY, str(out))
    return out


@pytest.fixture(scope="session")
def refs(tiny_ref):
    """refs('sd1') -> dict of numpy arrays saved by make_tiny.py."""
    cache = {}

    def get(kind: str) -> dict[str, np.ndarray]:
        if kind not in cache:
            with np.load(tiny_ref / f"{kind}_refs.npz") as f:
                cache[kind] = dict(f)
        return cache[kind]

    return get


@pytest.fixture(scope="session", autouse=True)
def flush_to_zero_from_the_start():
    """Jittor's first loaded kernel turns flush-to-zero on (see test_numerics.py): load one before any test,
    so that every test, numpy's arithmetic in it included, runs in that one state whatever the order."""
    import jittor as jt

    (jt.array(np.arange(3, dtype=np.float32)) * 1.25 + 0.5).sum().sync()
