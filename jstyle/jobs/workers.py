"""Run a TaskGraph on local workers: one process per GPU (pinned with CUDA_VISIBLE_DEVICES) or N on CPU.

Producer-consumer as in the seed: the scheduler hands the next ready task to whichever worker is idle,
so content generation for one style overlaps with injection for another. One worker runs in this
process. A failed task is retried (`retries` times), then reported while the rest goes on; a worker
that dies has its task re-queued (it counts as an attempt) and is replaced. Nothing here imports jittor.
"""

from __future__ import annotations

import ctypes
import importlib
import logging
import multiprocessing as mp
import os
import queue
import re
import shutil
import signal
import subprocess
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .graph import Task, TaskGraph
from .manifest import Manifest

__all__ = ["WorkerContext", "RunReport", "parse_workers", "run_graph", "keep_running_when_children_die",
           "remove_stale_temps"]


@dataclass
class WorkerContext:
    """What a task's execute() gets: its worker, device, the run's out dir and config, and a cache that
    lives as long as the worker process (pipelines, LoRAs, style inversions)."""

    worker: str
    device: str
    out_dir: Path
    config: dict[str, Any]
    cache: dict[str, Any] = field(default_factory=dict)
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("jstyle.run"))


@dataclass
class RunReport:
    done: list[str]
    already_done: list[str]
    failed: dict[str, str]
    not_run: list[str]
    seconds: float

    @property
    def ok(self) -> bool:
        return not self.failed and not self.not_run


def keep_running_when_children_die() -> None:
    """Once imported, Jittor quick-exits its process when any child dies from a signal (its SIGCHLD
    handler); a worker killed by the OOM killer or by hand must not take the scheduler down with it,
    so the default SIGCHLD handling is put back (main thread only, as Python requires)."""
    import signal

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)


def _gpu_count() -> int:
    if shutil.which("nvidia-smi") is None:
        return 0
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


def parse_workers(spec: str) -> list[str]:
    """'auto' (every GPU, else one CPU worker), 'cpu', 'cpu:N' (N CPU workers) or GPU ids '0,1,2,3'."""
    spec = spec.strip().lower()
    if spec == "auto":
        n = _gpu_count()
        return [f"cuda:{i}" for i in range(n)] or ["cpu:0"]
    if spec in ("cpu", "cpu:1"):
        return ["cpu:0"]
    if spec.startswith("cpu:") and spec[4:].isdigit() and int(spec[4:]) > 0:
        return [f"cpu:{i}" for i in range(int(spec[4:]))]
    ids = [s.strip() for s in spec.split(",")]
    if all(s.isdigit() for s in ids) and len(set(ids)) == len(ids):
        return [f"cuda:{s}" for s in ids]
    raise ConfigError(f"--devices {spec!r}: use auto, cpu, cpu:N or GPU ids like 0,1,2,3")


def _load(path: str) -> Callable[[Task, WorkerContext], dict]:
    module, _, name = path.partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"cannot load task function '{path}' ({e})")


def _context(worker: str, out_dir: Path, config: dict[str, Any]) -> WorkerContext:
    log = logging.getLogger(f"jstyle.run.{worker}")
    log.setLevel(logging.INFO)
    log.propagate = False
    if not log.handlers:
        (out_dir / "logs").mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(out_dir / "logs" / f"worker-{worker.replace(':', '')}.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        log.addHandler(handler)
    return WorkerContext(worker, worker.split(":")[0], out_dir, config, log=log)


def _run_one(fn: Callable, task: Task, ctx: WorkerContext) -> tuple[str, Any, float]:
    """('done', info, seconds) or ('failed', one-line error, seconds); the traceback goes to the logs."""
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


# temp names of the atomic writers (".<name>.tmp", tempfile's ".<name>.XXXXXXXX[.png|.tmp]" files and dirs)
_TEMP_NAME = re.compile(r"^\..+\.(tmp|[a-z0-9_]{8}(\.png|\.tmp)?)$")


def remove_stale_temps(out_dir: Path, min_age_s: float = 60.0) -> list[Path]:
    """Delete temp files and folders that a killed run left under `out_dir` (untouched for `min_age_s`, so a
    writer still at work elsewhere keeps its own); returns what was removed."""
    removed, now = [], time.time()
    for path in sorted(Path(out_dir).rglob(".*"), key=lambda p: -len(p.parts)):
        if not _TEMP_NAME.match(path.name) or not path.exists() or now - path.lstat().st_mtime < min_age_s:
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def _die_with_parent() -> None:
    """Linux: the kernel SIGKILLs this process when its parent dies (prctl PR_SET_PDEATHSIG), GIL or not."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: the watcher thread below still ends orphans


def _watch_parent(parent: int) -> None:
    while True:  # no orphans: a worker whose parent is gone (even SIGKILLed) exits at once
        if os.getppid() != parent:
            os._exit(3)
        time.sleep(0.5)


def _worker_main(worker: str, execute: str, out_dir: str, config: dict, inbox, results, parent: int) -> None:
    if worker.startswith("cuda:"):
        os.environ["CUDA_VISIBLE_DEVICES"] = worker.split(":")[1]  # before anything imports jittor
    _die_with_parent()
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(3)
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    fn = _load(execute)
    ctx = _context(worker, Path(out_dir), config)
    while True:
        task = inbox.get()
        if task is None:
            return
        results.put((worker, task.key, *_run_one(fn, task, ctx)))


class _InProcess:
    """The single-worker case: tasks run right here, in order."""

    def __init__(self, worker: str, execute: str, out_dir: Path, config: dict):
        self.fn, self.ctx, self.results = _load(execute), _context(worker, out_dir, config), queue.Queue()

    def submit(self, worker: str, task: Task) -> None:
        self.results.put((worker, task.key, *_run_one(self.fn, task, self.ctx)))

    def wait(self, running: dict) -> list[tuple]:
        return [self.results.get()]

    def close(self) -> None:
        pass


class _Processes:
    """One spawned process per worker, each with its own inbox; deaths are reported as failures."""

    def __init__(self, workers: list[str], execute: str, out_dir: Path, config: dict):
        self.mp = mp.get_context("spawn")
        self.args = (execute, str(out_dir), config)
        self.results = self.mp.Queue()
        self.procs: dict[str, Any] = {}
        for w in workers:
            self._start(w)

    def _start(self, worker: str) -> None:
        inbox = self.mp.Queue()
        proc = self.mp.Process(target=_worker_main, args=(worker, *self.args, inbox, self.results, os.getpid()),
                               daemon=True, name=f"jstyle-{worker}")
        proc.start()
        self.procs[worker] = (proc, inbox)

    def submit(self, worker: str, task: Task) -> None:
        self.procs[worker][1].put(task)

    def wait(self, running: dict) -> list[tuple]:
        try:
            return [self.results.get(timeout=0.5)]
        except queue.Empty:
            pass
        events = []
        for worker, (task, _) in list(running.items()):
            proc = self.procs[worker][0]
            if not proc.is_alive():
                try:  # a result may have been sent just before the exit
                    return [self.results.get(timeout=0.5)]
                except queue.Empty:
                    pass
                events.append((worker, task.key, "failed", f"worker {worker} died (exit code {proc.exitcode})", 0.0))
                self._start(worker)
        return events

    def close(self) -> None:
        for proc, inbox in self.procs.values():
            if proc.is_alive():
                inbox.put(None)
        for proc, _ in self.procs.values():
            proc.join(timeout=5)
            if proc.is_alive():
                proc.terminate()


class _Status:
    """One overall bar with ETA plus a status line per worker (stderr)."""

    def __init__(self, total: int, workers: list[str], enabled: bool):
        self.bars = None
        if enabled:
            from tqdm import tqdm

            self.bars = [tqdm(total=total, desc="tasks", unit="task", position=0, dynamic_ncols=True)]
            self.bars += [tqdm(total=0, position=i + 1, bar_format="{desc}", leave=False) for i in range(len(workers))]
            self.index = {w: i + 1 for i, w in enumerate(workers)}
            for w in workers:
                self.show(w, "idle")

    def show(self, worker: str, text: str) -> None:
        if self.bars:
            self.bars[self.index[worker]].set_description_str(f"  {worker}: {text}")

    def step(self) -> None:
        if self.bars:
            self.bars[0].update(1)

    def close(self) -> None:
        for bar in self.bars or []:
            bar.close()


def run_graph(graph: TaskGraph, execute: str, *, out_dir: Path, config: dict[str, Any], workers: list[str],
              retries: int = 1, progress: bool = True, manifest_config: dict[str, Any] | None = None,
              backend: str = "local", address: str | None = None) -> RunReport:
    """Run every task not already finished (per <out_dir>/manifest.json) on `workers`; `execute` is a
    'module:function' called as function(task, ctx) -> dict of JSON info kept in the manifest.

    The manifest records and hashes `manifest_config` (default: `config`): the settings that decide
    the outputs; a rerun with a different hash redoes every task. backend 'ray' runs the workers as Ray
    actors (a local instance, or the cluster at `address`) under the same manifest and retries."""
    graph.validate()
    keep_running_when_children_die()
    out_dir = Path(out_dir)
    (out_dir / "logs").mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out_dir)
    manifest = Manifest(out_dir / "manifest.json", config if manifest_config is None else manifest_config)
    started = time.perf_counter()
    done = {t.key for t in graph.tasks if manifest.is_done(t)}
    already = sorted(done)
    attempts: dict[str, int] = {}
    failed: dict[str, str] = {}
    blocked: set[str] = set()
    running: dict[str, tuple[Task, float]] = {}
    if backend == "ray":
        from .ray_backend import RayPool

        pool = RayPool(workers, execute, out_dir, config, address)
    elif backend == "local":
        pool = _InProcess(workers[0], execute, out_dir, config) if len(workers) == 1 else \
            _Processes(workers, execute, out_dir, config)
    else:
        raise ConfigError(f"backend {backend!r}: use local or ray")
    status = _Status(len(graph) - len(done), workers, progress)
    try:
        while True:
            busy = {t.key for t, _ in running.values()}
            ready = graph.ready(done, busy, blocked | set(failed))
            for worker in [w for w in workers if w not in running]:
                if not ready:
                    break
                task = ready.pop(0)
                running[worker] = (task, time.perf_counter())
                manifest.record_start(task.key, worker)
                status.show(worker, f"{task.key} (attempt {attempts.get(task.key, 0) + 1})")
                pool.submit(worker, task)
            if not running:
                break
            for worker, key, outcome, payload, seconds in pool.wait(running):
                task, _ = running.pop(worker)
                status.show(worker, "idle")
                if outcome == "done":
                    done.add(key)
                    manifest.record_done(task, seconds, payload)
                    status.step()
                    continue
                attempts[key] = attempts.get(key, 0) + 1
                final = attempts[key] > retries
                manifest.record_failed(key, payload, final)
                if final:
                    failed[key] = payload
                    status.step()
                    for dep in graph.downstream(key) - done:
                        blocked.add(dep)
                        manifest.record_blocked(dep, key)
    finally:
        pool.close()
        status.close()
    seconds = time.perf_counter() - started
    report = RunReport(sorted(done - set(already)), already, failed, sorted(blocked), seconds)
    manifest.finish({"done": len(report.done), "already_done": len(already), "failed": failed,
                     "not_run": report.not_run, "seconds": round(seconds, 1)})
    return report
