"""The task-graph engine on toy tasks (no model work): dependencies, workers, retries, resume, kills."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jstyle.errors import ConfigError
from jstyle.io import temp_path
from jstyle.jobs import Task, TaskGraph, parse_workers, run_graph
from jstyle.jobs.runtime import stderr_log
from jstyle.jobs.workers import keep_running_when_children_die

ROOT = Path(__file__).resolve().parents[2]
TOY = "tests.jstyle.jobs_tasks:execute"


def plan(styles=("00", "01"), prompts=("Cat", "Dog")) -> TaskGraph:
    g = TaskGraph()
    for s in styles:
        g.add(Task(f"{s}/train", "train", s, outputs=(f"work/{s}/lora",)))
        for p in prompts:
            g.add(Task(f"{s}/generate/{p}", "generate", s, p, deps=(f"{s}/train",), outputs=(f"work/{s}/{p}",)))
            g.add(Task(f"{s}/inject/{p}", "inject", s, p, deps=(f"{s}/generate/{p}",), outputs=(f"{s}/{p}",)))
    return g


def outputs(out: Path) -> dict[str, dict]:
    return {str(p.relative_to(out)): json.loads(p.read_text()) for p in sorted(out.rglob("*"))
            if p.is_file() and p.parts[len(out.parts)] not in ("attempts", "logs") and p.name != "manifest.json"}


def test_graph_validation_and_ready_order():
    g = plan(styles=("00",), prompts=("Cat",))
    assert [t.key for t in g.ready(set())] == ["00/train"]
    assert [t.key for t in g.ready({"00/train"})] == ["00/generate/Cat"]
    assert g.ready({"00/train"}, running={"00/generate/Cat"}) == []
    assert g.downstream("00/train") == {"00/generate/Cat", "00/inject/Cat"}
    with pytest.raises(ConfigError, match="twice"):
        g.add(Task("00/train", "train", "00"))
    with pytest.raises(ConfigError, match="unknown task 'nope'"):
        TaskGraph([Task("a", "x", "00", deps=("nope",))]).validate()
    with pytest.raises(ConfigError, match="cycle"):
        TaskGraph([Task("a", "x", "00", deps=("b",)), Task("b", "x", "00", deps=("a",))]).validate()


def test_parse_workers():
    assert parse_workers("cpu") == ["cpu:0"]
    assert parse_workers("cpu:2") == ["cpu:0", "cpu:1"]
    assert parse_workers("0,1,3") == ["cuda:0", "cuda:1", "cuda:3"]
    for bad in ("gpu", "0,0", "cpu:0", ""):
        with pytest.raises(ConfigError, match="--devices"):
            parse_workers(bad)


def test_two_workers_respect_dependencies_and_share_the_work(tmp_path):
    g = plan()
    report = run_graph(g, TOY, out_dir=tmp_path, config={"sleep": 0.3}, workers=["cpu:0", "cpu:1"], progress=False)
    assert report.ok and len(report.done) == len(g) == 10
    got = outputs(tmp_path)
    by_key = {v["key"]: v for v in got.values()}
    for task in g.tasks:
        for dep in task.deps:
            assert by_key[task.key]["start"] >= by_key[dep]["end"], (task.key, dep)
    assert {v["worker"] for v in got.values()} == {"cpu:0", "cpu:1"}
    assert len({v["pid"] for v in got.values()}) == 2 and os.getpid() not in {v["pid"] for v in got.values()}
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert {r["status"] for r in manifest["tasks"].values()} == {"done"}
    assert "python" in manifest["versions"] and manifest["config"] == {"sleep": 0.3}
    assert (tmp_path / "logs" / "00.log").read_text().count("done 00/") == 5


def test_dead_worker_task_is_requeued_and_a_failing_task_only_blocks_its_dependents(tmp_path):
    g = plan()
    cfg = {"crash_once": ["00/generate/Cat"], "always_fail": ["01/generate/Dog"]}
    report = run_graph(g, TOY, out_dir=tmp_path, config=cfg, workers=["cpu:0", "cpu:1"], retries=1, progress=False)
    assert set(report.failed) == {"01/generate/Dog"} and "fails on purpose" in report.failed["01/generate/Dog"]
    assert report.not_run == ["01/inject/Dog"]
    assert len(report.done) == 8 and "00/inject/Cat" in report.done
    tasks = json.loads((tmp_path / "manifest.json").read_text())["tasks"]
    assert tasks["00/generate/Cat"]["attempts"] == 2 and tasks["00/generate/Cat"]["status"] == "done"
    assert tasks["01/generate/Dog"]["attempts"] == 2 and tasks["01/generate/Dog"]["status"] == "failed"
    assert tasks["01/inject/Dog"]["status"] == "not run"


def test_a_sigkilled_worker_does_not_take_down_a_scheduler_that_imported_jittor(tmp_path):
    import jittor  # noqa: F401  (its SIGCHLD handler quick-exits the process when a child is killed)

    report = run_graph(plan(styles=("00",)), TOY, out_dir=tmp_path, config={"sigkill_once": ["00/train"]},
                       workers=["cpu:0", "cpu:1"], progress=False)
    assert report.ok and len(report.done) == 5
    assert json.loads((tmp_path / "manifest.json").read_text())["tasks"]["00/train"]["attempts"] == 2


def test_a_worker_that_dies_of_a_fatal_error_leaves_its_report_in_its_log(tmp_path):
    """Its stderr is a pipe read by a thread of its own: what that thread had not read died with the process."""
    report = run_graph(plan(styles=("00",)), TOY, out_dir=tmp_path, config={"abort_once": ["00/train"]},
                       workers=["cpu:0", "cpu:1"], progress=False)
    assert report.ok and json.loads((tmp_path / "manifest.json").read_text())["tasks"]["00/train"]["attempts"] == 2
    logs = "".join(stderr_log(tmp_path, w).read_text() for w in ("cpu:0", "cpu:1"))
    assert "Fatal Python error: Aborted" in logs and 'jobs_tasks.py", line' in logs, logs


def test_rerun_skips_done_and_redoes_changed_config_or_damaged_outputs(tmp_path):
    g = plan(styles=("00",))
    assert run_graph(g, TOY, out_dir=tmp_path, config={"a": 1}, workers=["cpu:0"], progress=False).ok
    again = run_graph(g, TOY, out_dir=tmp_path, config={"a": 1}, workers=["cpu:0"], progress=False)
    assert again.done == [] and len(again.already_done) == 5
    (tmp_path / "00" / "Cat").write_text("{}")  # truncated / replaced output
    (tmp_path / "work" / "00" / "Dog").unlink()  # missing output
    fixed = run_graph(g, TOY, out_dir=tmp_path, config={"a": 1}, workers=["cpu:0"], progress=False)
    assert fixed.done == ["00/generate/Dog", "00/inject/Cat"]
    changed = run_graph(g, TOY, out_dir=tmp_path, config={"a": 2}, workers=["cpu:0"], progress=False)
    assert len(changed.done) == 5 and changed.already_done == []


def test_stale_temps_of_a_killed_run_are_removed(tmp_path):
    """Temps of jstyle.io's atomic writers (files and folders) older than a minute go at the next run; a fresh
    temp (a writer still at work), a file that only looks like a temp, and other files stay."""
    stale = [temp_path(tmp_path / "00" / "Cat.png"), temp_path(tmp_path / "manifest.json"),
             temp_path(tmp_path / "work" / "00" / "ckpt" / "pytorch_lora_weights.safetensors")]
    folder = temp_path(tmp_path / "work" / "00" / "lora")
    keep = [temp_path(tmp_path / "00" / "Dog.png"), tmp_path / "00" / ".notes", tmp_path / "00" / "Cow.png",
            tmp_path / "00" / ".Cow.png.4242.tmp"]
    for path in stale + keep:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
    folder.mkdir(parents=True)
    (folder / "adapter.safetensors").write_text("x")
    old = time.time() - 3600
    for path in [*stale, folder, *keep[1:]]:
        os.utime(path, (old, old))
    assert run_graph(plan(styles=("00",)), TOY, out_dir=tmp_path, config={}, workers=["cpu:0"], progress=False).ok
    assert [p for p in [*stale, folder] if p.exists()] == [] and all(p.exists() for p in keep)


# what Jittor's parallel_compiler.cc writes with std::cerr while kernels compile (>2 s), then a newline
COMPILING = "\n" + "".join(f"Compiling Operators({i}/40) used: {2.0 + i / 10:.3g}s eta: {9.0 - i / 5:.3g}s \r"
                            for i in range(1, 41)) + "\n"


@pytest.mark.parametrize("workers", [["cpu:0"], ["cpu:0", "cpu:1"]])
def test_jittor_compile_lines_go_to_the_log_and_the_terminal_shows_one_status(tmp_path, capfd, workers):
    g = TaskGraph([Task("00/train", "train", "00", outputs=("work/00/lora",))])
    cfg = {"stderr": COMPILING, "sleep": 0.5}  # the sleep: the status line is read while the task still runs
    assert run_graph(g, TOY, out_dir=tmp_path, config=cfg, workers=workers, progress=True).ok
    terminal = capfd.readouterr().err
    assert "Compiling Operators" not in terminal
    assert "compiling kernels for the first run ... 6 s" in terminal  # the last line's "used: 6s"
    log = stderr_log(tmp_path, "cpu:0").read_text()
    lines = [line for line in log.splitlines() if line.startswith("Compiling Operators")]
    assert len(lines) == 40 and lines[-1].startswith("Compiling Operators(40/40) used: 6s")
    if len(workers) == 1:  # the scheduler's own stderr is the terminal again afterwards
        os.write(2, b"after the run\n")
        assert capfd.readouterr().err == "after the run\n"


def test_jittor_compile_lines_without_bars_give_one_note(tmp_path, capfd):
    g = TaskGraph([Task("00/train", "train", "00", outputs=("work/00/lora",))])
    assert run_graph(g, TOY, out_dir=tmp_path, config={"stderr": COMPILING, "sleep": 0.5}, workers=["cpu:0"],
                     progress=False).ok
    terminal = capfd.readouterr().err
    assert terminal.count("compiling kernels for the first run") == 1 and "Compiling Operators" not in terminal


DRIVER = """
import sys
sys.path[:0] = [{root!r}, {tests!r}]
from test_jobs import plan
from jstyle.jobs import run_graph
if __name__ == "__main__":
    report = run_graph(plan(), {toy!r}, out_dir={out!r}, config={{"sleep": 0.4}}, workers=["cpu:0", "cpu:1"],
                       progress=False)
    sys.exit(0 if report.ok else 1)
"""


def _driver(tmp_path: Path, out: Path) -> list[str]:
    script = tmp_path / f"driver_{out.name}.py"
    script.write_text(DRIVER.format(root=str(ROOT), tests=str(Path(__file__).parent), toy=TOY, out=str(out)))
    return [sys.executable, str(script)]


def _pids_alive(pids: set[int]) -> set[int]:
    """Processes still running (zombies waiting for init to reap them count as gone)."""
    alive = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            alive.add(pid)
    return alive


def test_sigkill_mid_run_then_rerun_gives_the_same_tree(tmp_path):
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    assert subprocess.run(_driver(tmp_path, clean), timeout=120).returncode == 0
    keep_running_when_children_die()  # pytest may hold Jittor (earlier tests), whose SIGCHLD handler would exit
    proc = subprocess.Popen(_driver(tmp_path, killed))
    deadline = time.time() + 60
    while time.time() < deadline and len(list((killed / "00").glob("*")) if (killed / "00").exists() else []) < 1:
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = outputs(killed)
    assert 0 < len(partial) < 10
    workers = {v["pid"] for v in partial.values()}
    for _ in range(50):
        if not _pids_alive(workers):
            break
        time.sleep(0.1)
    assert _pids_alive(workers) == set()  # workers noticed their parent died
    assert subprocess.run(_driver(tmp_path, killed), timeout=120).returncode == 0
    a, b = outputs(clean), outputs(killed)
    assert sorted(a) == sorted(b) == sorted(t.outputs[0] for t in plan().tasks)
    assert all(a[k]["key"] == b[k]["key"] for k in a)
    assert not [p for p in killed.rglob("*.tmp")]
    tasks = json.loads((killed / "manifest.json").read_text())["tasks"]
    assert {r["status"] for r in tasks.values()} == {"done"}


def test_ray_backend_runs_the_same_graph_with_a_dead_actor_requeued(tmp_path):
    pytest.importorskip("ray", reason="ray is pinned in envs/jstyle-requirements.txt; this env lacks it")
    g = plan()
    local, remote = tmp_path / "local", tmp_path / "ray"
    cfg = {"crash_once": ["01/generate/Cat"]}
    assert run_graph(g, TOY, out_dir=local, config=cfg, workers=["cpu:0", "cpu:1"], progress=False).ok
    report = run_graph(g, TOY, out_dir=remote, config=cfg, workers=["cpu:0", "cpu:1"], progress=False, backend="ray")
    assert report.ok and len(report.done) == len(g)
    assert sorted(outputs(local)) == sorted(outputs(remote))
    got = outputs(remote)
    by_key = {v["key"]: v for v in got.values()}
    for task in g.tasks:
        for dep in task.deps:
            assert by_key[task.key]["start"] >= by_key[dep]["end"]
    assert len({v["pid"] for v in got.values()}) >= 2 and os.getpid() not in {v["pid"] for v in got.values()}
    a = json.loads((local / "manifest.json").read_text())
    b = json.loads((remote / "manifest.json").read_text())
    assert a["config_hash"] == b["config_hash"] and set(a["tasks"]) == set(b["tasks"])
    assert b["tasks"]["01/generate/Cat"]["attempts"] == 2 and b["tasks"]["01/generate/Cat"]["status"] == "done"
    again = run_graph(g, TOY, out_dir=remote, config=cfg, workers=["cpu:0"], progress=False, backend="ray")
    assert again.done == [] and len(again.already_done) == len(g)
