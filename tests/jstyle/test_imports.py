"""jstyle's import graph has no cycle (module-level or inside functions), and the job engine and the method
registry import without Jittor (the scheduler process stays light until a method module is needed)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _modules() -> dict[str, Path]:
    found = {}
    for path in (ROOT / "jstyle").rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the jstyle modules it imports anywhere in its file (a package's own parents left out)."""
    mods = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = ".".join((package[:len(package) - node.level + 1] if node.level else []) +
                                ([node.module] if node.module else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            else:
                continue
            for target in targets:
                while target and target not in mods:
                    target = target.rpartition(".")[0]
                if target and target != name and not name.startswith(target + "."):
                    deps.add(target)
        graph[name] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_jstyle_has_no_import_cycle():
    graph = import_graph()
    for backend in ("jstyle.jobs.workers", "jstyle.jobs.ray_backend"):
        assert "jstyle.jobs.runtime" in graph[backend]
    assert cycles(graph) == []
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]  # the check itself


def test_no_private_name_is_imported_across_jobs_modules():
    for path in (ROOT / "jstyle" / "jobs").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                assert not [a.name for a in node.names if a.name.startswith("_")], path.name


def test_the_job_engine_and_the_registry_import_without_jittor():
    code = ("import sys; import jstyle.jobs, jstyle.jobs.plan, jstyle.jobs.ray_backend, jstyle.methods.registry; "
            "print('jittor' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_method_settings_and_run_all_flags_import_without_jittor():
    """run_all's flags come from the methods' settings dataclasses (registry.all_settings imports their modules):
    StyleID's and DiffStyle's settings, and the jstyleid run settings, import without Jittor."""
    code = ("import sys; from jstyle.methods import registry; classes = registry.all_settings(); "
            "import jstyle.methods.styleid_dreambooth; "
            "print(len(classes), 'jittor' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-1] == "False" and int(out.stdout.split()[0]) >= 3
