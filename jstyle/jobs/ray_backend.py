"""The same task graph on a Ray cluster: one actor per worker (one GPU each for 'cuda' workers), the same
manifest, retries and logs as the local processes. Ray is imported only here, only when asked for.

    run_graph(graph, execute, ..., workers=["cuda:0", "cuda:1"], backend="ray", address="auto")
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .graph import Task
from .runtime import load_task, run_one, stderr_log, stderr_to_log, use_threads, worker_context

__all__ = ["RayPool"]


class _Actor:
    """Runs tasks inside a Ray worker process, with a WorkerContext that lives as long as the actor; the
    process's stderr (Jittor's compile progress) goes to the run's log, as a local worker's does, and its CPU
    kernels run on the scheduler's thread count, as a local worker's do (not Ray's OMP_NUM_THREADS = num_cpus)."""

    def __init__(self, worker: str, execute: str, out_dir: str, config: dict, threads: int):
        use_threads(threads)  # before anything imports jittor
        self.stderr = stderr_to_log(stderr_log(Path(out_dir), worker))
        self.stderr.__enter__()  # for the actor's life: Ray ends the process with it
        self.fn, self.ctx = load_task(execute), worker_context(worker, Path(out_dir), config)

    def run(self, task: Task) -> tuple[str, Any, float]:
        return run_one(self.fn, task, self.ctx)


class RayPool:
    """The pool interface of the local backend (submit / wait / close) over Ray actors."""

    def __init__(self, workers: list[str], execute: str, out_dir: Path, config: dict, address: str | None = None,
                 threads: int = 1):
        try:
            import ray
        except ImportError:
            raise ConfigError("--backend ray needs the ray package in the jstyle env (pip install ray)")
        self.ray = ray
        self.owned = not ray.is_initialized()
        if self.owned:
            kwargs: dict[str, Any] = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
            if address:
                kwargs["address"] = address
            else:
                kwargs["num_cpus"] = max(len(workers), 1)
            # workers import jstyle and the task function from the driver's import path
            kwargs["runtime_env"] = {"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}}
            ray.init(**kwargs)
        self.remote = ray.remote(_Actor)
        self.args = (execute, str(out_dir), config, threads)
        self.actors: dict[str, Any] = {}
        self.futures: dict[Any, str] = {}
        for w in workers:
            self._start(w)

    def _start(self, worker: str) -> None:
        gpus = 1 if worker.startswith("cuda") else 0
        self.actors[worker] = self.remote.options(num_cpus=1, num_gpus=gpus, max_restarts=0).remote(worker, *self.args)

    def submit(self, worker: str, task: Task) -> None:
        self.futures[self.actors[worker].run.remote(task)] = worker

    def wait(self, running: dict) -> list[tuple]:
        ready, _ = self.ray.wait(list(self.futures), num_returns=1, timeout=0.5)
        events = []
        for ref in ready:
            worker = self.futures.pop(ref)
            task = running[worker][0]
            try:
                events.append((worker, task.key, *self.ray.get(ref)))
            except self.ray.exceptions.RayActorError as e:  # the actor's process died: re-queue, replace it
                events.append((worker, task.key, "failed", f"worker {worker} died ({type(e).__name__})", 0.0))
                self._start(worker)
            except self.ray.exceptions.RayError as e:
                events.append((worker, task.key, "failed", f"{type(e).__name__}: {e}".splitlines()[0], 0.0))
        return events

    def close(self) -> None:
        for actor in self.actors.values():
            self.ray.kill(actor)
        self.actors.clear()
        if self.owned:  # a local instance this run started
            self.ray.shutdown()
