"""The whole job as a task graph: plan (which tasks), stages (what each does), workers (who runs them)."""

from .graph import Task, TaskGraph
from .manifest import Manifest
from .workers import RunReport, WorkerContext, parse_workers, run_graph

__all__ = ["Task", "TaskGraph", "Manifest", "RunReport", "WorkerContext", "parse_workers", "run_graph"]
