"""The run manifest (<out>/manifest.json): config and its hash, versions, per-task status and timings.

A task counts as finished only when its record says so for the same config hash and every output it
recorded is still there with the recorded size; anything else is redone on a rerun.
"""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..io import atomic_write
from .graph import Task

__all__ = ["Manifest", "config_hash", "versions"]


def config_hash(config: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of the settings that change the outputs."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def versions() -> dict[str, str]:
    """Python, numpy, jittor (when installed; not imported) and the git commit of this checkout."""
    from importlib import metadata

    found = {"python": platform.python_version()}
    for name in ("numpy", "jittor"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    root = Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10).stdout.strip()
        if sha:
            found["jstyle_git"] = sha
    except (OSError, subprocess.SubprocessError):
        pass
    return found


class Manifest:
    """Per-task records, rewritten atomically after every event (so a kill loses nothing recorded)."""

    def __init__(self, path: Path, config: dict[str, Any]):
        self.path = Path(path)
        self.out_dir = self.path.parent
        self.config = config
        self.hash = config_hash(config)
        self.tasks: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            try:
                old = json.loads(self.path.read_text())
                self.tasks = dict(old.get("tasks", {}))
            except (OSError, json.JSONDecodeError) as e:
                raise InputError(f"{self.path}: unreadable run manifest ({e}); delete it to start the run afresh")
        self.data = {"config": config, "config_hash": self.hash, "versions": versions(),
                     "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "finished": None, "tasks": self.tasks}
        self.save()

    def save(self) -> None:
        atomic_write(self.path, json.dumps(self.data, indent=1, sort_keys=False, default=str))

    def is_done(self, task: Task) -> bool:
        rec = self.tasks.get(task.key)
        if not rec or rec.get("status") != "done" or rec.get("config_hash") != self.hash:
            return False
        sizes = rec.get("outputs", {})
        if set(sizes) != set(task.outputs):
            return False
        for rel, size in sizes.items():
            p = self.out_dir / rel
            if not p.is_file() or p.stat().st_size != size:
                return False
        return True

    def record_start(self, key: str, worker: str) -> None:
        rec = self.tasks.setdefault(key, {"attempts": 0})
        rec.update(status="running", worker=worker, config_hash=self.hash, attempts=rec.get("attempts", 0) + 1)
        rec.pop("error", None)
        self.save()

    def record_done(self, task: Task, seconds: float, info: dict[str, Any] | None = None) -> None:
        rec = self.tasks.setdefault(task.key, {"attempts": 1})
        outputs = {}
        for rel in task.outputs:
            p = self.out_dir / rel
            outputs[rel] = p.stat().st_size if p.is_file() else -1
        rec.update(status="done", seconds=round(seconds, 3), outputs=outputs, config_hash=self.hash,
                   info=info or {}, finished=time.strftime("%Y-%m-%dT%H:%M:%S"))
        self.save()

    def record_failed(self, key: str, error: str, final: bool) -> None:
        rec = self.tasks.setdefault(key, {"attempts": 1})
        rec.update(status="failed" if final else "retrying", error=error)
        self.save()

    def record_blocked(self, key: str, because: str) -> None:
        self.tasks[key] = {**self.tasks.get(key, {}), "status": "not run", "error": f"{because} failed"}
        self.save()

    def finish(self, summary: dict[str, Any]) -> None:
        self.data.update(finished=time.strftime("%Y-%m-%dT%H:%M:%S"), summary=summary)
        self.save()
