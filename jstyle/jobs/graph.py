"""The run as a task graph: (style, stage) tasks with dependencies, handed out as they become ready."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError

__all__ = ["Task", "TaskGraph"]


@dataclass(frozen=True)
class Task:
    """One unit of work: `key` is unique ("00/train", "00/generate/Dolphin"); `outputs` are paths relative
    to the run's out dir that the task writes atomically (what a rerun checks); `candidate` (--method auto):
    the candidate whose settings the task runs with."""

    key: str
    stage: str
    style: str
    prompt: str | None = None
    deps: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    candidate: str | None = None


class TaskGraph:
    """Tasks in insertion order; `ready` gives those whose dependencies are all done."""

    def __init__(self, tasks: list[Task] | None = None):
        self._tasks: dict[str, Task] = {}
        for task in tasks or []:
            self.add(task)

    def add(self, task: Task) -> Task:
        if task.key in self._tasks:
            raise ConfigError(f"task '{task.key}' is in the plan twice")
        self._tasks[task.key] = task
        return task

    def __len__(self) -> int:
        return len(self._tasks)

    def __contains__(self, key: str) -> bool:
        return key in self._tasks

    def __getitem__(self, key: str) -> Task:
        return self._tasks[key]

    @property
    def tasks(self) -> list[Task]:
        return list(self._tasks.values())

    def validate(self) -> TaskGraph:
        """Raise ConfigError for a dependency on an unknown task or a cycle."""
        for task in self._tasks.values():
            for dep in task.deps:
                if dep not in self._tasks:
                    raise ConfigError(f"task '{task.key}' depends on unknown task '{dep}'")
        state: dict[str, int] = {}  # 1 = on the current path, 2 = finished

        def visit(key: str) -> None:
            stack = [(key, iter(self._tasks[key].deps))]
            state[key] = 1
            while stack:
                node, deps = stack[-1]
                dep = next(deps, None)
                if dep is None:
                    state[node] = 2
                    stack.pop()
                elif state.get(dep) == 1:
                    raise ConfigError(f"tasks '{node}' and '{dep}' depend on each other (a cycle)")
                elif dep not in state:
                    state[dep] = 1
                    stack.append((dep, iter(self._tasks[dep].deps)))

        for key in self._tasks:
            if key not in state:
                visit(key)
        return self

    def ready(self, done: set[str], running: set[str] | None = None, blocked: set[str] | None = None) -> list[Task]:
        """Tasks not done, not running, not blocked, whose dependencies are all done (insertion order)."""
        skip = done | (running or set()) | (blocked or set())
        return [t for t in self._tasks.values() if t.key not in skip and all(d in done for d in t.deps)]

    def downstream(self, key: str) -> set[str]:
        """Every task that depends on `key`, directly or through others."""
        found: set[str] = set()
        frontier = {key}
        while frontier:
            frontier = {t.key for t in self._tasks.values() if frontier & set(t.deps)} - found
            found |= frontier
        return found
