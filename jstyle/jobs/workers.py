"""Run a TaskGraph on local workers: one process per GPU (pinned with CUDA_VISIBLE_DEVICES) or N on CPU.

Producer-consumer as in the seed: the scheduler hands the next ready task to whichever worker is idle,
so content generation for one style overlaps with injection for another. One worker runs in this
process. A failed task is retried (`retries` times), then reported while the rest goes on; a worker
that dies has its task re-queued (it counts as an attempt) and is replaced. Nothing here imports jittor.
"""

from __future__ import annotations

import ctypes
import faulthandler
import functools
import multiprocessing as mp
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from ..errors import ConfigError
from ..io import is_temp, temp_writer
from .graph import Task, TaskGraph
from .manifest import Manifest
from .runtime import (
    compile_note,
    cpu_threads,
    load_task,
    run_one,
    stderr_log,
    stderr_to_log,
    use_threads,
    worker_context,
)

__all__ = ["RunReport", "parse_workers", "run_graph", "keep_running_when_children_die",
           "remove_stale_temps"]


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


def _writer_gone(path: Path) -> bool:
    """The temp's writer (the pid in its name) is no process on this machine."""
    pid = temp_writer(path)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        pass
    return False


def remove_stale_temps(out_dir: Path, min_age_s: float = 60.0, local: bool = False) -> list[Path]:
    """Delete the temp files and folders of jstyle.io's atomic writers that a killed run left under `out_dir`
    (untouched for `min_age_s`, so a writer still at work elsewhere keeps its own; `local`, when every writer
    is on this machine: also a fresh one whose writer process is gone); returns what was removed."""
    removed, now = [], time.time()
    for path in sorted(Path(out_dir).rglob(".*"), key=lambda p: -len(p.parts)):
        if not is_temp(path) or not path.exists():
            continue
        if now - path.lstat().st_mtime < min_age_s and not (local and _writer_gone(path)):
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


def _worker_main(worker: str, execute: str, out_dir: str, config: dict, threads: int, inbox, results,
                 parent: int) -> None:
    use_threads(threads)  # before anything imports jittor
    if worker.startswith("cuda:"):
        os.environ["CUDA_VISIBLE_DEVICES"] = worker.split(":")[1]  # before anything imports jittor
    _die_with_parent()
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(3)
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()

    def compiling(seconds: float | None) -> None:  # to the scheduler's status line
        results.put((worker, None, "compiling", seconds, 0.0))

    log = stderr_log(Path(out_dir), worker)
    with stderr_to_log(log, compiling), open(log, "a") as crashes:  # Jittor's output: the log, not the terminal
        # a fatal error's report (Python's traceback on SIGABRT, SIGSEGV, ...) is written to the log directly: the
        # pipe's reader is a thread of this process and dies with it, unread
        faulthandler.enable(crashes, all_threads=True)
        fn = load_task(execute)
        ctx = worker_context(worker, Path(out_dir), config)
        while True:
            task = inbox.get()
            if task is None:
                return
            results.put((worker, task.key, *run_one(fn, task, ctx)))


class _InProcess:
    """The single-worker case: tasks run right here, in order."""

    def __init__(self, worker: str, execute: str, out_dir: Path, config: dict):
        self.fn, self.ctx, self.results = load_task(execute), worker_context(worker, out_dir, config), queue.Queue()

    def submit(self, worker: str, task: Task) -> None:
        self.results.put((worker, task.key, *run_one(self.fn, task, self.ctx)))

    def wait(self, running: dict) -> list[tuple]:
        return [self.results.get()]

    def close(self) -> None:
        pass


class _Processes:
    """One spawned process per worker, each with its own inbox; deaths are reported as failures."""

    def __init__(self, workers: list[str], execute: str, out_dir: Path, config: dict, threads: int):
        self.mp = mp.get_context("spawn")
        self.args = (execute, str(out_dir), config, threads)
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


LOCAL = "local"  # the worker of local stages: a thread of the scheduler's process


class _WithLocal:
    """A pool plus a thread of this process for the `local` stages (--method auto's select tasks, which keep the
    checker's scorer loaded once per run, whatever the workers are)."""

    def __init__(self, pool: Any, execute: str, out_dir: Path, config: dict):
        self.pool, self.fn, self.done = pool, load_task(execute), queue.Queue()
        self.ctx = worker_context(LOCAL, out_dir, config)

    def submit(self, worker: str, task: Task) -> None:
        if worker != LOCAL:
            return self.pool.submit(worker, task)
        threading.Thread(target=lambda: self.done.put((LOCAL, task.key, *run_one(self.fn, task, self.ctx))),
                         daemon=True, name="jstyle-local").start()

    def wait(self, running: dict) -> list[tuple]:
        try:
            return [self.done.get_nowait()]
        except queue.Empty:
            pass
        others = {w: v for w, v in running.items() if w != LOCAL}
        return self.pool.wait(others) if others else [self.done.get()]

    def close(self) -> None:
        for kept in self.ctx.cache.values():  # the scorer
            if callable(getattr(kept, "close", None)):
                kept.close()
        self.pool.close()


class _Status:
    """One overall bar with ETA plus a status line per worker, on `file` (the terminal's stderr); a worker
    whose Jittor compiles kernels shows it on its line (without bars: one line when compiling starts)."""

    def __init__(self, total: int, workers: list[str], enabled: bool):
        self.total, self.workers, self.enabled = total, workers, enabled
        self.bars, self.file, self.text, self.noted = None, None, dict.fromkeys(workers, "idle"), set()

    def open(self, file: TextIO) -> None:
        self.file = file
        if self.enabled:
            from tqdm import tqdm

            self.bars = [tqdm(total=self.total, desc="tasks", unit="task", position=0, dynamic_ncols=True, file=file)]
            self.bars += [tqdm(total=0, position=i + 1, bar_format="{desc}", leave=False, file=file)
                          for i in range(len(self.workers))]
            self.index = {w: i + 1 for i, w in enumerate(self.workers)}
            for w in self.workers:
                self.show(w, "idle")

    def show(self, worker: str, text: str, note: str | None = None) -> None:
        self.text[worker] = text
        if self.bars:
            self.bars[self.index[worker]].set_description_str(f"  {worker}: {text}" + (f" - {note}" if note else ""))

    def compiling(self, worker: str, seconds: float | None) -> None:
        """Jittor on `worker` has compiled kernels for `seconds` so far (None: it stopped)."""
        if self.bars:
            self.show(worker, self.text[worker], None if seconds is None else compile_note(seconds))
        elif seconds is not None and worker not in self.noted and self.file is not None:
            self.noted.add(worker)
            print(f"{worker}: compiling kernels for the first run (Jittor's progress: <out>/logs)", file=self.file,
                  flush=True)

    def step(self) -> None:
        if self.bars:
            self.bars[0].update(1)

    def close(self) -> None:
        for bar in self.bars or []:
            bar.close()


def run_graph(graph: TaskGraph, execute: str, *, out_dir: Path, config: dict[str, Any], workers: list[str],
              retries: int = 1, progress: bool = True, manifest_config: dict[str, Any] | None = None,
              backend: str = "local", address: str | None = None, local_stages: tuple[str, ...] = ()) -> RunReport:
    """Run every task not already finished (per <out_dir>/manifest.json) on `workers`; `execute` is a
    'module:function' called as function(task, ctx) -> dict of JSON info kept in the manifest. Tasks of
    `local_stages` run one at a time on a thread of this process (worker "local"), beside the workers.

    The manifest records and hashes `manifest_config` (default: `config`): the settings that decide
    the outputs; a rerun with a different hash redoes every task. backend 'ray' runs the workers as Ray
    actors (a local instance, or the cluster at `address`) under the same manifest and retries. Every worker,
    of either backend, runs its CPU kernels on the same number of threads (runtime.cpu_threads)."""
    graph.validate()
    keep_running_when_children_die()
    out_dir = Path(out_dir)
    (out_dir / "logs").mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out_dir, local=backend == "local")
    manifest = Manifest(out_dir / "manifest.json", config if manifest_config is None else manifest_config)
    started = time.perf_counter()
    done = {t.key for t in graph.tasks if manifest.is_done(t)}
    already = sorted(done)
    if backend not in ("local", "ray"):
        raise ConfigError(f"backend {backend!r}: use local or ray")
    takers = workers + [LOCAL] if any(t.stage in local_stages for t in graph.tasks) else workers
    with ExitStack() as stack:
        status = _Status(len(graph) - len(done), takers, progress)
        in_process = backend == "local" and len(workers) == 1
        terminal = sys.stderr
        if in_process:  # this process is the worker: its stderr (Jittor's) goes to the log, the bars stay
            terminal = stack.enter_context(stderr_to_log(stderr_log(out_dir, workers[0]),
                                                         functools.partial(status.compiling, workers[0])))
        status.open(terminal)
        stack.callback(status.close)
        if in_process:
            pool = _InProcess(workers[0], execute, out_dir, config)
        elif backend == "ray":
            from .ray_backend import RayPool

            pool = RayPool(workers, execute, out_dir, config, address, cpu_threads())
        else:
            pool = _Processes(workers, execute, out_dir, config, cpu_threads())
        if takers is not workers:
            pool = _WithLocal(pool, execute, out_dir, config)
        stack.callback(pool.close)
        failed, blocked = _schedule(graph, pool, manifest, status, takers, done, retries, local_stages)
    seconds = time.perf_counter() - started
    report = RunReport(sorted(done - set(already)), already, failed, sorted(blocked), seconds)
    manifest.finish({"done": len(report.done), "already_done": len(already), "failed": failed,
                     "not_run": report.not_run, "seconds": round(seconds, 1)})
    return report


def _schedule(graph: TaskGraph, pool: Any, manifest: Manifest, status: _Status, workers: list[str], done: set[str],
              retries: int, local_stages: tuple[str, ...] = ()) -> tuple[dict[str, str], set[str]]:
    """Hand ready tasks to idle workers until none is left; `done` grows in place. Returns (failed, blocked)."""
    attempts: dict[str, int] = {}
    failed: dict[str, str] = {}
    blocked: set[str] = set()
    running: dict[str, tuple[Task, float]] = {}
    while True:
        busy = {t.key for t, _ in running.values()}
        ready = graph.ready(done, busy, blocked | set(failed))
        for worker in [w for w in workers if w not in running]:
            task = next((t for t in ready if (t.stage in local_stages) == (worker == LOCAL)), None)
            if task is None:
                continue
            ready.remove(task)
            running[worker] = (task, time.perf_counter())
            manifest.record_start(task.key, worker)
            status.show(worker, f"{task.key} (attempt {attempts.get(task.key, 0) + 1})")
            pool.submit(worker, task)
        if not running:
            break
        for worker, key, outcome, payload, seconds in pool.wait(running):
            if outcome == "compiling":  # a status report of a running task, not its end
                status.compiling(worker, payload)
                continue
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
    return failed, blocked
