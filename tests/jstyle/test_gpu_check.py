"""bench/prepare_gpu_check.sh on a fresh clone (no .whl/), with a stand-in for `pip download` that writes an
empty wheel per pin (the real downloads need a package index and ~50 MB): it writes every file
bench/gpu_check.sh reads from .whl/, and any failed step ends it with an error, never with "ready"."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PREPARE_READS = ["bench/prepare_gpu_check.sh", "envs/jstyle-requirements.txt", "envs/checker-requirements.txt"]

# `python -m pip download [options] -d DIR PIN...`: an empty wheel per PIN (an sdist under --no-binary),
# except the pins named in FAKE_PIP_DROP; exit 1 when FAKE_PIP_FAIL is set. It warns first, as pip does here about
# a pip.conf find-links folder that is missing.
FAKE_PYTHON = r'''#!{python}
import os, re, sys, zipfile
args = sys.argv[1:]
if args[:3] != ["-m", "pip", "download"]:
    sys.exit("fake python: only `-m pip download`")
print("WARNING: Location 'file:///nowhere/simple/x/' is ignored: it is neither a file nor a directory.",
      file=sys.stderr)
if os.environ.get("FAKE_PIP_FAIL"):
    sys.exit("ERROR: Could not find a version that satisfies the requirement (no index)")
dest = args[args.index("-d") + 1]
drop = set(os.environ.get("FAKE_PIP_DROP", "").split())
for pin in (a for a in args if "==" in a and a not in drop):
    name, ver = pin.split("==")
    if "--no-binary=:all:" in args:
        open(os.path.join(dest, f"{{name}}-{{ver}}.tar.gz"), "wb").close()
        continue
    dist = re.sub(r"[-_.]+", "_", name)
    with zipfile.ZipFile(os.path.join(dest, f"{{dist}}-{{ver}}-py3-none-any.whl"), "w") as z:
        z.writestr(f"{{dist}}-{{ver}}.dist-info/METADATA", f"Name: {{name}}\nVersion: {{ver}}\n")
'''


def pins_of(path: Path) -> list[str]:
    """The `name==version` lines of a requirements file, comments dropped."""
    lines = (ln.split("#")[0].strip() for ln in path.read_text().splitlines())
    return [ln for ln in lines if ln]


@pytest.fixture
def clone(tmp_path) -> Path:
    """A clone-like checkout (a git repo of what prepare reads, no .whl/) and the fake python in it."""
    repo = tmp_path / "repo"
    for rel in PREPARE_READS:
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, repo / rel)
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run(["git", "-C", str(repo), "add", "."], check=True)
    fake = tmp_path / "python"
    fake.write_text(FAKE_PYTHON.format(python=sys.executable))
    fake.chmod(0o755)
    return repo


def prepare(repo: Path, **env: str) -> subprocess.CompletedProcess:
    run_env = {**os.environ, "JSTYLE_PREPARE_PYTHON": str(repo.parent / "python"), **env}
    return subprocess.run(["bash", str(repo / "bench/prepare_gpu_check.sh")], capture_output=True, text=True,
                          env=run_env, timeout=120)


def test_prepare_writes_every_file_gpu_check_reads(clone, tmp_path):
    assert not (clone / ".whl").exists()
    out = prepare(clone)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "ready." in out.stdout and "error" not in out.stderr and "/nowhere/" not in out.stderr
    assert 'run(command="bash bench/gpu_check.sh", carry=[".whl"]' in out.stdout
    whl = clone / ".whl"
    # the jstyle env's pins (setup.sh installs JSTYLE_REQUIREMENTS=.whl/requirements.txt): all but ray's and ruff
    reqs = pins_of(whl / "requirements.txt")
    names = {p.split("==")[0] for p in reqs}
    assert all(re.fullmatch(r"[A-Za-z0-9_.-]+==[^=\s]+", p) for p in reqs), reqs
    assert "jittor" in names and "numpy" in names and not names & {"ray", "ruff", "torch"}
    assert set(reqs) <= set(pins_of(ROOT / "envs/jstyle-requirements.txt"))
    # the torch side's pins (the refsite phase), at the checker env's versions
    ref = pins_of(whl / "ref-requirements.txt")
    assert len(ref) == 9 and set(ref) <= set(pins_of(ROOT / "envs/checker-requirements.txt"))
    assert any(p.startswith("diffusers==") for p in ref)
    # a file for every pin: the jittor sdist (built offline), pip's wheel (a venv without ensurepip), the rest
    files = {f.name for f in whl.iterdir()}
    jittor = next(p for p in reqs if p.startswith("jittor=="))
    assert f"jittor-{jittor.split('==')[1]}.tar.gz" in files
    assert any(f.startswith("pip-") and f.endswith(".whl") for f in files)
    assert len([f for f in files if f.endswith(".whl")]) == len(reqs) - 1 + 3 + len(ref) - len(set(ref) & set(reqs))
    # the refsite phase finds diffusers' wheel (and each pin this python lacks) by bench/_gpu_check.py's rule
    site = subprocess.run([sys.executable, str(ROOT / "bench/_gpu_check.py"), "refsite", sys.executable, str(whl),
                           str(whl / "ref-requirements.txt"), str(tmp_path / "refsite")],
                          capture_output=True, text=True, timeout=60)
    assert site.returncode == 0, site.stdout + site.stderr
    unpacked = json.loads(site.stdout)["unpacked"]
    assert any(p.startswith("diffusers==") for p in unpacked)
    assert all((tmp_path / "refsite" / (re.sub(r"[-_.]+", "_", p.split("==")[0]) + f"-{p.split('==')[1]}.dist-info"))
               .is_dir() for p in unpacked)
    again = prepare(clone)  # a rerun over the filled .whl/ is fine too
    assert again.returncode == 0 and "ready." in again.stdout, again.stdout + again.stderr


@pytest.mark.parametrize("env, says", [
    ({"FAKE_PIP_FAIL": "1"}, "pip download failed"),
    ({"FAKE_PIP_DROP": "pip==25.2"}, "pip==25.2 not in"),
])
def test_prepare_stops_on_a_failed_step(clone, env, says):
    out = prepare(clone, **env)
    assert out.returncode == 1
    assert says in out.stderr and "not ready" in out.stderr
    assert "ready." not in out.stdout


def test_records_and_log_name_no_machine_paths(tmp_path):
    """The JSON's values and the log (the `shorten` filter) write the repository as . and the user's home as ~;
    a path that only starts like them is kept."""
    root, home = tmp_path / "clone", tmp_path / "home"
    env = {**os.environ, "JSTYLE_GPU_CHECK_ROOT": str(root), "JSTYLE_GPU_CHECK_USER_HOME": str(home)}
    helper = [sys.executable, str(ROOT / "bench/_gpu_check.py")]
    js = tmp_path / "out" / "gpu_check.json"
    subprocess.run([*helper, "phase", str(js), "build", "ok", "2.5", f"cuda_home={root}/.gpu-check-home/cuda",
                    f'refsite={{"had": ["{home}/.pyenv/x"], "n": 3}}', f"other={root}2/x"],
                   check=True, env=env, timeout=60)
    subprocess.run([*helper, "machine", str(js), f"base_python={home}/.pyenv/versions/3.12.1/bin/python3.12"],
                   check=True, env=env, timeout=60)
    data = json.loads(js.read_text())
    assert data["machine"]["base_python"] == "~/.pyenv/versions/3.12.1/bin/python3.12"
    assert data["phases"]["build"] == {"status": "ok", "seconds": 2.5, "cuda_home": "./.gpu-check-home/cuda",
                                       "refsite": {"had": ["~/.pyenv/x"], "n": 3}, "other": f"{root}2/x"}
    log = subprocess.run([*helper, "shorten"], input=f"OUT={root}/outputs, JSTYLE_HOME={root}\n[envs] {home}/.cache\n",
                         capture_output=True, text=True, check=True, env=env, timeout=60).stdout
    assert log == "OUT=./outputs, JSTYLE_HOME=.\n[envs] ~/.cache\n"


def gpu_check(tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess, dict]:
    """bench/gpu_check.sh in GPU mode on this machine (no GPU), its files under tmp_path; (process, its JSON)."""
    run_env = {**os.environ, "JSTYLE_GPU_CHECK_MODE": "gpu", "OUT": str(tmp_path / "out"),
               "JSTYLE_GPU_CHECK_HOME": str(tmp_path / "home"), "JSTYLE_GPU_CHECK_TORCH_PYTHON": sys.executable, **env}
    out = subprocess.run(["bash", str(ROOT / "bench/gpu_check.sh")], capture_output=True, text=True, env=run_env,
                         timeout=120)
    return out, json.loads((tmp_path / "out" / "gpu_check.json").read_text())


def test_gpu_mode_fits_one_nine_minute_device_call(tmp_path):
    """GPU mode's budget, and the device call prepare prints, fit 9 minutes; a phase that hangs is cut at what is
    left of the budget, and the phases after it are skipped, so the run ends within its budget."""
    _, data = gpu_check(tmp_path / "defaults", JSTYLE_GPU_CHECK_PHASES="none")
    budget = data["machine"]["budget_s"]
    prepare_text = (ROOT / "bench/prepare_gpu_check.sh").read_text()
    call_s = int(re.search(r'run\(command="bash bench/gpu_check.sh", carry=\["\.whl"\], timeout_s=(\d+)\)',
                           prepare_text).group(1))
    assert budget + 5 <= call_s <= 9 * 60, (budget, call_s)
    # a base python that hangs: the machine phase runs it first
    hang = tmp_path / "python3.12"
    hang.write_text("#!/bin/sh\nexec sleep 300\n")
    hang.chmod(0o755)
    out, data = gpu_check(tmp_path / "hang", JSTYLE_GPU_CHECK_BUDGET="24", JSTYLE_GPU_CHECK_BASE_PYTHON=str(hang))
    phases = data["phases"]
    machine = phases["machine"]  # its limit (60 s) capped by the budget less the 8 s kept for the record
    assert machine["status"] == "timeout" and 24 - 8 - 2 <= machine["limit_s"] <= 24 - 8, machine
    assert machine["limit_s"] <= machine["seconds"] <= machine["limit_s"] + 6, machine
    assert {p["status"] for n, p in phases.items() if n != "machine"} == {"skipped"}, phases
    assert data["machine"]["total_s"] <= 24 and out.returncode == 1, (data["machine"], out.stdout[-2000:])


def test_pytest_summary_counts_failures_and_slowest(tmp_path):
    """The parity phase's figures from a `pytest -v -rfE --durations` log: counts, failures, the slowest steps."""
    log = tmp_path / "pytest.log"
    log.write_text(
        "tests/jstyle/test_a.py::test_x[ddim] PASSED [ 33%]\n"
        "tests/jstyle/test_a.py::test_y FAILED [ 66%]\n"
        "tests/jstyle/test_a.py::test_z SKIPPED (no GPU) [100%]\n"
        "============================= slowest 8 durations ==============================\n"
        "41.20s call     tests/jstyle/test_a.py::test_x[ddim]\n"
        "3.05s setup    tests/jstyle/test_a.py::test_y\n"
        "=========================== short test summary info ============================\n"
        "FAILED tests/jstyle/test_a.py::test_y - AssertionError: 0.5 > 0.1\n"
        "=================== 1 failed, 1 passed, 1 skipped in 45.10s ===================\n")
    out = subprocess.run([sys.executable, str(ROOT / "bench/_gpu_check.py"), "pytest-summary", str(log)],
                         capture_output=True, text=True, check=True, timeout=60)
    assert json.loads(out.stdout) == {
        "passed": 1, "failed": 1, "error": 0, "skipped": 1, "xfailed": 0, "finished": True,
        "failures": ["FAILED tests/jstyle/test_a.py::test_y - AssertionError: 0.5 > 0.1"],
        "slowest": ["41.20s call tests/jstyle/test_a.py::test_x[ddim]", "3.05s setup tests/jstyle/test_a.py::test_y"]}
