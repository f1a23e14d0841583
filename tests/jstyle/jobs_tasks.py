"""Toy task functions for the engine tests (imported by dotted path inside spawned workers)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def execute(task, ctx) -> dict:
    """Writes {start, end, pid, worker} to each output after sleeping config['sleep'] seconds.

    config['crash_once']: keys whose first attempt kills the worker process (os._exit);
    config['sigkill_once']: keys whose first attempt SIGKILLs the worker process;
    config['abort_once']: keys whose first attempt aborts the worker process (SIGABRT, as a C++ terminate would);
    config['always_fail']: keys that always raise;
    config['stderr']: bytes (latin-1 text) written to file descriptor 2 first, as Jittor's C++ writes."""
    cfg = ctx.config
    if cfg.get("stderr"):
        os.write(2, cfg["stderr"].encode("latin-1"))
    marker = ctx.out_dir / "attempts" / task.key.replace("/", "_")
    tries = int(marker.read_text()) + 1 if marker.exists() else 1
    _write(marker, str(tries))
    if task.key in cfg.get("always_fail", ()):
        raise RuntimeError(f"{task.key} fails on purpose")
    if task.key in cfg.get("crash_once", ()) and tries == 1:
        os._exit(7)
    if task.key in cfg.get("sigkill_once", ()) and tries == 1:
        os.kill(os.getpid(), 9)  # as the OOM killer would
    if task.key in cfg.get("abort_once", ()) and tries == 1:
        os.abort()
    start = time.time()
    time.sleep(cfg.get("sleep", 0.0))
    for rel in task.outputs:
        _write(ctx.out_dir / rel, json.dumps({"key": task.key, "start": start, "end": time.time(),
                                              "pid": os.getpid(), "worker": ctx.worker}))
    return {"tries": tries}
