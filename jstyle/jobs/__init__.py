"""The whole job as a task graph: plan (which tasks), stages (what each does), workers (who runs them:
local processes, or Ray actors in ray_backend), runtime (what runs inside a worker, for both)."""

from .graph import Task, TaskGraph
from .manifest import Manifest
from .runtime import WorkerContext
from .workers import RunReport, parse_workers, run_graph

__all__ = ["Task", "TaskGraph", "Manifest", "RunReport", "WorkerContext", "parse_workers", "run_graph"]
