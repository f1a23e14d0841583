"""Inside a worker: its context, its logs, running one task, and its stderr sent to the run's logs.

Both backends (local processes in jstyle.jobs.workers, Ray actors in jstyle.jobs.ray_backend) and the
stages import this module; it imports neither of them. Nothing here imports jittor.

Jittor prints its kernel compile progress (`Compiling Operators(n/m) used: ... eta: ...`, hundreds of
lines on a cold kernel cache) with C++ `std::cerr`, which no Jittor flag silences, so `stderr_to_log`
points the process's file descriptor 2 at a pipe: everything written there (Jittor, the compilers it
runs, Python warnings) lands in `<out>/logs/worker-<id>.stderr.log`, and the compile progress is
reported as one number, the seconds spent compiling so far, for the terminal's status line.
"""

from __future__ import annotations

import importlib
import logging
import os
import re
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from ..errors import ConfigError
from .graph import Task

__all__ = ["WorkerContext", "load_task", "worker_context", "run_one", "stderr_log", "stderr_to_log",
           "compile_note", "COMPILE_LINE", "cpu_threads", "use_threads"]

# Jittor's parallel_compiler.cc: "Compiling Operators(3/120) used: 2.41s eta: 93.2s \r"
COMPILE_LINE = re.compile(rb"Compiling Operators\((\d+)/(\d+)\) used:\s*([0-9.]+(?:e[+-]?\d+)?)s")


@dataclass
class WorkerContext:
    """What a task's execute() gets: its worker, device, the run's out dir and config, and a cache that
    lives as long as the worker process (pipelines, LoRAs, style inversions)."""

    worker: str
    device: str
    out_dir: Path
    config: dict[str, Any]
    cache: dict[Any, Any] = field(default_factory=dict)
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("jstyle.run"))


def cpu_threads() -> int:
    """The OpenMP threads of every worker's CPU kernels: OMP_NUM_THREADS as this (the scheduler's) process was
    started with, else its cores. One count for local workers and Ray actors alike (Ray would give each actor
    OMP_NUM_THREADS = its num_cpus, 1): kernels split their sums by thread, so the count changes the last bits."""
    given = os.environ.get("OMP_NUM_THREADS", "")
    if given.isdigit() and int(given) > 0:
        return int(given)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def use_threads(n: int) -> None:
    """This worker process's CPU kernels run on n threads (call it before Jittor loads: OpenMP reads it once)."""
    os.environ["OMP_NUM_THREADS"] = str(n)


def load_task(path: str) -> Callable[[Task, WorkerContext], dict]:
    """The task function named 'module:function'."""
    module, _, name = path.partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as e:
        raise ConfigError(f"cannot load task function '{path}' ({e})")


def _log_name(worker: str) -> str:
    return f"worker-{worker.replace(':', '')}"


def worker_context(worker: str, out_dir: Path, config: dict[str, Any]) -> WorkerContext:
    """A worker's context; its logger writes to <out>/logs/worker-<id>.log."""
    log = logging.getLogger(f"jstyle.run.{worker}")
    log.setLevel(logging.INFO)
    log.propagate = False
    if not log.handlers:
        (out_dir / "logs").mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(out_dir / "logs" / f"{_log_name(worker)}.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        log.addHandler(handler)
    return WorkerContext(worker, worker.split(":")[0], out_dir, config, log=log)


def run_one(fn: Callable, task: Task, ctx: WorkerContext) -> tuple[str, Any, float]:
    """('done', info, seconds) or ('failed', one-line error, seconds); the traceback goes to the logs
    (the worker's and <out>/logs/<style>.log)."""
    style_log = logging.FileHandler(ctx.out_dir / "logs" / f"{task.style}.log")
    style_log.setFormatter(logging.Formatter(f"%(asctime)s [{ctx.worker}] %(message)s"))
    ctx.log.addHandler(style_log)
    start = time.perf_counter()
    try:
        ctx.log.info("start %s", task.key)
        info = fn(task, ctx) or {}
        ctx.log.info("done %s in %.1f s", task.key, time.perf_counter() - start)
        return "done", info, time.perf_counter() - start
    except Exception as e:  # reported, retried, and the run goes on
        ctx.log.error("failed %s: %s\n%s", task.key, e, traceback.format_exc())
        return "failed", f"{type(e).__name__}: {e}".splitlines()[0], time.perf_counter() - start
    finally:
        ctx.log.removeHandler(style_log)
        style_log.close()


def stderr_log(out_dir: Path, worker: str) -> Path:
    """Where a worker's stderr goes: <out>/logs/worker-<id>.stderr.log."""
    return Path(out_dir) / "logs" / f"{_log_name(worker)}.stderr.log"


def compile_note(seconds: float) -> str:
    """The terminal's words while Jittor compiles kernels."""
    return f"compiling kernels for the first run ... {seconds:.0f} s"


class _CompileWatch:
    """Jittor's compile progress lines -> on_compile(seconds compiling so far), then on_compile(None)."""

    def __init__(self, on_compile: Callable[[float | None], None] | None):
        self.on_compile, self.done_s, self.batch_s, self.shown = on_compile, 0.0, None, None

    def line(self, text: bytes) -> None:
        m = COMPILE_LINE.search(text)
        if m:  # one compile batch in progress ("used" counts from the batch's start)
            self.batch_s = float(m[3])
            total = self.done_s + self.batch_s
            if self.shown is None or int(total) != int(self.shown):
                self._tell(total)
        elif self.batch_s is not None:  # the batch ended (Jittor ends it with a newline)
            self.done_s += self.batch_s
            self.batch_s = None
            self._tell(None)

    def _tell(self, value: float | None) -> None:
        self.shown = value
        if self.on_compile is not None:
            try:
                self.on_compile(value)
            except Exception:  # the status line is a courtesy; the log is what counts
                pass


def _pump(fd: int, log_path: Path, watch: _CompileWatch) -> None:
    """Copy the pipe to the log (carriage returns as new lines) until every writer has closed it."""
    pending = b""
    with open(fd, "rb", buffering=0) as pipe, open(log_path, "ab", buffering=0) as log:
        while chunk := pipe.read(1 << 16):
            try:
                log.write(chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n"))
            except OSError:
                pass  # a full disk must not block the writers: keep draining
            *lines, pending = re.split(rb"[\r\n]", pending + chunk)
            for line in lines:
                watch.line(line)
        if pending:
            watch.line(pending)


@contextmanager
def stderr_to_log(log_path: Path, on_compile: Callable[[float | None], None] | None = None) -> Iterator[TextIO]:
    """While the block runs, this process's fd 2 (and so every child it starts) writes to `log_path`.

    Yields a text stream on the stderr it had before (the terminal), for progress bars and messages.
    `on_compile(seconds)` is called (from a helper thread) as Jittor reports kernel compile progress,
    at most once per second of it, and `on_compile(None)` when a compile batch ends."""
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    sys.stderr.flush()
    saved = os.dup(2)
    read, write = os.pipe()
    os.dup2(write, 2)
    os.close(write)
    pump = threading.Thread(target=_pump, args=(read, log_path, _CompileWatch(on_compile)), daemon=True,
                            name="jstyle-stderr")
    pump.start()
    terminal = os.fdopen(os.dup(saved), "w", buffering=1)
    try:
        yield terminal
    finally:
        try:
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        os.dup2(saved, 2)  # the pipe's last write end closes (once children that inherited it are gone)
        os.close(saved)
        pump.join(timeout=2)
        terminal.close()
