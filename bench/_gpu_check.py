"""Helpers of bench/gpu_check.sh (any python 3.9+, standard library only; nothing runs at import).

    python bench/_gpu_check.py phase JSON NAME STATUS SECONDS [KEY=VALUE ...]   record one phase
    python bench/_gpu_check.py machine JSON KEY=VALUE ...                       record machine facts
    python bench/_gpu_check.py python-config BASE_PYTHON OUT                    write a python3.X-config
    python bench/_gpu_check.py pytest-summary LOG                               counts of a `pytest -v` log
    python bench/_gpu_check.py bench-json LOG                                   GPU_CHECK lines of a log
    python bench/_gpu_check.py refsite PYTHON WHEELS REQS TARGET                unpack what PYTHON lacks
    python bench/_gpu_check.py load-status JSON NAME                            a recorded phase's status
    python bench/_gpu_check.py shorten < LOG > SHORT                            the log's paths shortened
    python bench/_gpu_check.py task-seconds MANIFEST                            run_all's seconds per task

Values given as KEY=VALUE are parsed as JSON when they parse (numbers, lists, objects), else kept as text.
Recorded values and the log name no machine's paths: the repository (JSTYLE_GPU_CHECK_ROOT) is written ".",
the user's home (JSTYLE_GPU_CHECK_USER_HOME) "~".
Every write replaces the JSON file atomically under a lock (phases may end at once: one runs in the
background), so a run killed at any point leaves a readable file.
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
from pathlib import Path


def _value(text: str) -> object:
    """'12' -> 12, '[1]' -> [1], 'abc' -> 'abc'."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _pairs(items: list[str]) -> dict[str, object]:
    out: dict[str, object] = {}
    for item in items:
        key, sep, val = item.partition("=")
        if sep:
            out[key] = _value(val)
    return out


def shorten(value: object, root: str, home: str) -> object:
    """`value` (text, or lists/dicts of it) with `root`/... written ./... and `home`/... written ~/..."""
    if isinstance(value, dict):
        return {k: shorten(v, root, home) for k, v in value.items()}
    if isinstance(value, list):
        return [shorten(v, root, home) for v in value]
    if not isinstance(value, str):
        return value
    for prefix, short in ((root, "."), (home, "~")):  # the repository first: it may lie in the home
        prefix = prefix.rstrip("/")
        if prefix:
            value = re.sub(r"(?<![\w.~/-])" + re.escape(prefix) + r"(?![\w.+-])", short, value)
    return value


def _short(value: object) -> object:
    """shorten() with the run's repository and user home (from the environment gpu_check.sh sets)."""
    return shorten(value, os.environ.get("JSTYLE_GPU_CHECK_ROOT", ""), os.environ.get("JSTYLE_GPU_CHECK_USER_HOME", ""))


def load(path: Path) -> dict:
    """The check's JSON so far ({"machine": {}, "phases": {}} when new or unreadable)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        data = {}
    data.setdefault("machine", {})
    data.setdefault("phases", {})
    return data


def save(path: Path, data: dict) -> None:
    """Write atomically (a temporary file in the same folder, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".gpu_check.")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2, sort_keys=False)
        f.write("\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def _locked(path: Path):
    """An exclusive lock on PATH.lock (released when the returned file is closed)."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    f = open(path.with_name(path.name + ".lock"), "w")  # noqa: SIM115 - closed by the caller's `with`
    fcntl.flock(f, fcntl.LOCK_EX)
    return f


def record_phase(path: Path, name: str, status: str, seconds: float, figures: dict[str, object]) -> None:
    """Set phases[name] = {status, seconds, **figures}, keeping the phases' order of first record."""
    with _locked(path):
        data = load(path)
        entry = data["phases"].get(name, {})
        entry.update({"status": status, "seconds": round(seconds, 1)}, **_short(figures))
        data["phases"][name] = entry
        save(path, data)


def record_machine(path: Path, facts: dict[str, object]) -> None:
    """Merge `facts` into the JSON's machine section."""
    with _locked(path):
        data = load(path)
        data["machine"].update(_short(facts))
        save(path, data)


CONFIG_SHIM = '''#!{python}
"""python{ver}-config for Jittor (written by bench/_gpu_check.py: the interpreter ships no -config script)."""
import sys
import sysconfig

paths, var = sysconfig.get_paths(), sysconfig.get_config_var
if "--includes" in sys.argv:
    print(" ".join(sorted({{"-I" + paths["include"], "-I" + paths["platinclude"]}})))
elif "--extension-suffix" in sys.argv:
    print(var("EXT_SUFFIX"))
elif "--ldflags" in sys.argv or "--libs" in sys.argv:
    print(" ".join(x for x in ("-L" + (var("LIBDIR") or ""), var("LIBS") or "", var("SYSLIBS") or "") if x.strip("-L")))
else:
    sys.exit("usage: python-config --includes | --extension-suffix | --ldflags")
'''


def python_config(base: str, out: Path) -> str:
    """Path of a python3.X-config for `base`: the interpreter's own when it has one, else a shim at `out`.
    Exits 1 with one line when the interpreter has no Python.h (Jittor compiles against it)."""
    import subprocess

    info = json.loads(subprocess.run(
        [base, "-c", "import json, sys, sysconfig; print(json.dumps({'bindir': sysconfig.get_config_var('BINDIR'), "
         "'ver': '%d.%d' % sys.version_info[:2], 'include': sysconfig.get_paths()['include'], "
         "'exe': getattr(sys, '_base_executable', sys.executable)}))"],
        check=True, capture_output=True, text=True).stdout)
    if not Path(info["include"], "Python.h").is_file():
        sys.exit(f"error: {base} has no {info['include']}/Python.h: Jittor cannot compile; "
                 f"use a Python {info['ver']} with headers (python{info['ver']}-dev) as JSTYLE_BASE_PYTHON")
    for cand in (Path(info["bindir"] or "/nonexistent") / f"python{info['ver']}-config",
                 Path(info["exe"]).parent / f"python{info['ver']}-config"):
        if cand.is_file() and os.access(cand, os.X_OK):
            return str(cand)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(CONFIG_SHIM.format(python=info["exe"], ver=info["ver"]))
    out.chmod(0o755)
    return str(out)


def pytest_summary(log: Path) -> dict[str, object]:
    """passed/failed/error/skipped counts, the first line of each failure and the slowest steps (its --durations
    lines) from a `pytest -v -rfE` log (works on a log cut short by a timeout: counts are of the lines written)."""
    text = log.read_text(errors="replace") if log.is_file() else ""
    counts = {k: 0 for k in ("passed", "failed", "error", "skipped", "xfailed")}
    for m in re.finditer(r"^\S+::\S+ (PASSED|FAILED|ERROR|SKIPPED|XFAIL)\b", text, re.M):
        counts[{"XFAIL": "xfailed"}.get(m.group(1), m.group(1).lower())] += 1
    failures = [m.group(0)[:300] for m in re.finditer(r"^(FAILED|ERROR) \S+.*$", text, re.M)]
    finished = re.search(r"^=+ .*(passed|failed|error).* in [\d.]+s", text, re.M) is not None
    slowest = [" ".join(m.groups()) for m in re.finditer(r"^([\d.]+s) (setup|call|teardown) +(\S+)", text, re.M)]
    return {**counts, "finished": finished, "failures": failures[:20], "slowest": slowest[:8]}


def bench_json(log: Path) -> list[dict]:
    """Every `GPU_CHECK {json}` line (the bench scripts' --json summaries) of a log."""
    out = []
    text = log.read_text(errors="replace") if log.is_file() else ""
    for line in text.splitlines():
        if line.startswith("GPU_CHECK "):
            try:
                out.append(json.loads(line[len("GPU_CHECK "):]))
            except ValueError:
                pass
    return out


def task_seconds(manifest: Path) -> dict[str, object]:
    """{task: seconds} of a run_all manifest (a task not done: its status), in the order the tasks started."""
    try:
        tasks = json.loads(manifest.read_text()).get("tasks", {})
    except (OSError, ValueError):
        return {}
    return {k: t.get("seconds", t.get("status")) if t.get("status") == "done" else t.get("status")
            for k, t in tasks.items()}


def refsite(python: str, wheels: Path, reqs: Path, target: Path) -> dict[str, object]:
    """Unpack into `target` the wheels of the pins in `reqs` that `python` does not have installed (diffusers
    always): a `pip install --no-deps --target` without pip (a bare venv may have none). Returns what was
    unpacked and what `python` had."""
    import subprocess
    import zipfile

    pins = [ln.split("#")[0].strip() for ln in reqs.read_text().splitlines()]
    pins = [p for p in pins if "==" in p]
    probe = ("import json, sys\nfrom importlib import metadata\nout = {}\nfor n in sys.argv[1:]:\n"
             "    try:\n        out[n] = metadata.version(n)\n    except metadata.PackageNotFoundError:\n"
             "        out[n] = None\nprint(json.dumps(out))")
    have = json.loads(subprocess.run([python, "-c", probe, *(p.split("==")[0] for p in pins)], check=True,
                                     capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ""}).stdout)
    target.mkdir(parents=True, exist_ok=True)
    unpacked = []
    for pin in pins:
        name, version = pin.split("==")
        if have.get(name) and name != "diffusers":
            continue
        norm = re.sub(r"[-_.]+", "_", name).lower()
        found = [w for w in sorted(wheels.glob("*.whl")) if re.sub(r"[-_.]+", "_", w.name.split("-")[0]).lower() == norm
                 and w.name.split("-")[1] == version]
        if not found:
            raise SystemExit(f"error: no wheel for {pin} in {wheels}; run bash bench/prepare_gpu_check.sh first")
        with zipfile.ZipFile(found[0]) as z:
            z.extractall(target)
        unpacked.append(pin)
    return {"unpacked": unpacked, "had": {k: v for k, v in have.items() if v}}


def main(argv: list[str]) -> int:
    """The command line of the module docstring."""
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    cmd, rest = argv[0], argv[1:]
    if cmd == "phase":
        record_phase(Path(rest[0]), rest[1], rest[2], float(rest[3]), _pairs(rest[4:]))
    elif cmd == "machine":  # versions stay text ("13.0"), whole numbers become numbers
        facts = {k: int(v) if isinstance(v, str) and v.isdigit() else v
                 for k, v in (item.partition("=")[::2] for item in rest[1:] if "=" in item)}
        record_machine(Path(rest[0]), facts)
    elif cmd == "python-config":
        print(python_config(rest[0], Path(rest[1])))
    elif cmd == "pytest-summary":
        print(json.dumps(pytest_summary(Path(rest[0]))))
    elif cmd == "load-status":
        print(load(Path(rest[0]))["phases"].get(rest[1], {}).get("status", "not run"))
    elif cmd == "refsite":
        print(json.dumps(refsite(rest[0], Path(rest[1]), Path(rest[2]), Path(rest[3]))))
    elif cmd == "shorten":  # a filter: line by line, flushed (the run's log as it is written)
        for line in sys.stdin:
            sys.stdout.write(_short(line))
            sys.stdout.flush()
    elif cmd == "task-seconds":
        print(json.dumps(task_seconds(Path(rest[0]))))
    elif cmd == "bench-json":
        print(json.dumps(bench_json(Path(rest[0]))))
    else:
        print(f"unknown command {cmd!r}\n{__doc__}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
