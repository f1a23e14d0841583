"""Shared fixtures for the Jittor-side tests (run in the jstyle env).

Reference outputs come from diffusers/transformers, computed by tests/reference/make_tiny.py in
the checker env (a separate process: torch never enters the jstyle env) and cached per machine,
keyed by the script's hash.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
MAKE_TINY = ROOT / "tests" / "reference" / "make_tiny.py"


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


def run_reference(script: Path, *args: str) -> str:
    """Run a tests/reference script in the checker env; a failure fails the test with its output."""
    proc = subprocess.run([checker_python(), str(script), *args], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": ""})
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        pytest.fail(f"{script.name} {' '.join(args[:1])} failed in the checker env (exit {proc.returncode})")
    return proc.stdout


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
