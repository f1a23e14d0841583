"""--method auto: candidates and their plan, the checker's scorer from the Jittor side (restarted when killed),
and a whole tiny run killed during screening and during scoring, then rerun: the same selection and images."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import run_all  # noqa: E402
from jstyle.errors import ConfigError  # noqa: E402
from jstyle.io import is_temp  # noqa: E402
from jstyle.jobs import auto  # noqa: E402
from jstyle.jobs.plan import RunConfig  # noqa: E402
from jstyle.methods import registry  # noqa: E402

ROOT = run_all.ROOT
TINY = ["--demo", "--styles", "00", "--size", "16", "--steps", "1", "--train-steps", "2", "--styleid-steps", "2",
        "--diffstyle-steps", "2", "--sdedit-steps", "2", "--no-check", "--no-package", "--no-progress",
        "--method", "auto"]
CHECKER = os.environ.get("JSTYLE_CHECKER_PYTHON", "")
needs_checker = pytest.mark.skipif(not Path(CHECKER or "/nonexistent").exists(),
                                   reason="JSTYLE_CHECKER_PYTHON (the checker env) is not set: source envs/env.sh")


def _auto(**kw) -> RunConfig:
    return RunConfig(data="d", model="m", out="o", method="auto", random_weights=True, select_by="hist", **kw)


def test_candidates_share_loras_and_contents_and_the_plan_waits_for_the_selection():
    cfg = _auto(candidates=("dreambooth", "sdedit", "styleid_dreambooth", "styleid", "diffstyle",
                            "styleid:styleid_gamma=0.5", "dreambooth:train_steps=3"), screen_prompts=2)
    graph = auto.build_auto_graph(cfg, {"00": ["Cat", "Dog", "Owl"]})
    stages = [t.stage for t in graph.tasks]
    # two LoRAs (train_steps 3 is another); contents: base "{obj}" (3 users) and each LoRA's "{instance}" x 2 prompts
    assert stages.count("train") == 2 and stages.count("generate") == 3 * 2 and stages.count("screen") == 7 * 2
    screened = auto.screen_subset(cfg, "00", ["Cat", "Dog", "Owl"])
    assert len(screened) == 2 and screened == [w for w in ["Cat", "Dog", "Owl"] if w in screened]
    assert screened == auto.screen_subset(cfg, "00", ["Cat", "Dog", "Owl"])  # seeded: the same every time
    sdedit, styleid = graph["00/screen/sdedit/Cat"], graph["00/screen/styleid/Cat"]
    assert graph[sdedit.deps[0]].stage == "train" and graph[styleid.deps[0]].stage == "generate"
    assert graph[styleid.deps[0]].key == graph["00/screen/diffstyle/Cat"].deps[0]  # one content for both
    select = graph["00/select"]
    assert sorted(select.deps) == sorted(t.key for t in graph.tasks if t.stage == "screen")
    finals = [t for t in graph.tasks if t.stage == "final"]
    assert [t.outputs for t in finals] == [("00/Cat.png",), ("00/Dog.png",), ("00/Owl.png",)]
    assert all(t.deps == ("00/select",) for t in finals)
    assert cfg.hashed() != _auto(candidates=("styleid:styleid_gamma=0.6",)).hashed()
    # a non-auto run's hash has none of auto's settings (its runs resume as before)
    plain = RunConfig(data="d", model="m", out="o")
    assert plain.hashed() == RunConfig(data="d", model="m", out="o", select_by="hist", random_weights=True).hashed()


def test_default_candidates_come_from_the_registry_field(monkeypatch):
    # every method but StyleBlend (three trainings per style: named by hand), no recipe today
    assert registry.default_candidates() == tuple(m for m in registry.METHODS if m != "styleblend")
    assert "vsp" in registry.default_candidates() and "styleid_dreambooth" in registry.default_candidates()
    before = [c.spec for c in auto.candidates(_auto())]
    toy = registry.Method("toy", "a toy", trains=False, prompt="{obj}", generates=True)
    monkeypatch.setitem(registry.METHODS, "toy", toy)
    monkeypatch.setitem(registry.METHODS, "sdedit", dataclasses.replace(registry.METHODS["sdedit"], candidate=False))
    assert [c.spec for c in auto.candidates(_auto())] == [s for s in before if s != "sdedit"] + ["toy"]


@pytest.mark.parametrize("flags, words", [
    (["--candidates", "nope"], "neither a method"),
    (["--candidates", "styleid:gamma=1"], "not a setting=value"),
    (["--candidates", "styleid:styleid_gamma=high"], "not a float"),
    (["--candidates", "styleid", "styleid"], "listed twice"),
    (["--select-by", "final"], "random backbones make every metric but hist"),
    (["--select-by", "hist", "--screen-prompts", "0"], "--screen-prompts 0"),
    (["--score-device", "gpu0"], "--score-device 'gpu0'"),
])
def test_bad_auto_settings_are_one_line_errors(tmp_path, capsys, flags, words):
    assert run_all.main([*TINY, "--out", str(tmp_path), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err and "Traceback" not in err


def test_pick_is_the_argmax_with_the_first_on_a_tie():
    entries = {"a": {"score": 0.5}, "b": {"score": 0.7}, "c": {"score": 0.7}, "d": {"score": None}}
    assert auto.pick(entries, "hist") == "b"
    assert auto.pick(entries, "fid") == "a"  # lower is better; undefined is the worst either way
    with pytest.raises(ConfigError):
        _auto(candidates=("styleid",)).__class__(data="d", model="m", out="o", method="auto", select_by="dino",
                                                  random_weights=True)


def _style(root: Path, rng: np.random.Generator) -> tuple[Path, Path]:
    data, sub = root / "data", root / "sub"
    (data / "00" / "images").mkdir(parents=True)
    (sub / "00").mkdir(parents=True)
    (data / "00" / "prompt.json").write_text(json.dumps({"0": "Cat", "1": "Dog"}))
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(data / "00" / "images" / f"{i}.png")
    for word in ("Cat", "Dog"):
        Image.fromarray(rng.integers(0, 128, (24, 24, 3), dtype=np.uint8)).save(sub / "00" / f"{word}.png")
    return data, sub


@needs_checker
def test_the_scorer_is_started_once_and_again_when_killed(tmp_path):
    from jstyle.jobs.workers import keep_running_when_children_die
    from jstyle.scorer import Scorer

    keep_running_when_children_die()  # as run_graph does: Jittor's SIGCHLD handler would end pytest with the scorer
    data, sub = _style(tmp_path, np.random.default_rng(0))
    scorer = Scorer("cpu", random_weights=True, log=tmp_path / "scorer.log")
    try:
        first = scorer.score(sub, data, "00", ["Cat"], ["hist"])
        again = scorer.score(sub, data, "00", ["Cat"], ["hist"])
        assert scorer.started == 1 and again["metrics"] == first["metrics"] and first["loads"] == 0
        both = scorer.score(sub, data, "00", None, ["hist"])
        assert both["metrics"]["hist"] != first["metrics"]["hist"] and set(both["images"]) == {"Cat.png", "Dog.png"}
        os.kill(scorer.pid, signal.SIGKILL)
        time.sleep(0.2)
        after = scorer.score(sub, data, "00", ["Cat"], ["hist"])
        assert scorer.started == 2 and after["metrics"] == first["metrics"]
    finally:
        scorer.close()
    assert scorer.pid is None


def _run(out: Path, flags: list[str], kill_when=None) -> int:
    """run_all.py in a process of its own; SIGKILLed as soon as kill_when(out) is true."""
    proc = subprocess.Popen([sys.executable, str(ROOT / "run_all.py"), *TINY, *flags, "--out", str(out)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    while kill_when is not None and proc.poll() is None:
        if kill_when(out):
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    return proc.wait(timeout=900)


def _log_has(text: str):
    return lambda out: any(text in p.read_text(errors="replace") for p in (out / "logs").glob("worker-*.log"))


def _images(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*.png"))}


def _without_seconds(entry):
    if isinstance(entry, dict):
        return {k: _without_seconds(v) for k, v in entry.items() if k not in ("seconds", "score_seconds")}
    return entry


@needs_checker
def test_killed_during_screening_and_during_scoring_then_rerun_gives_the_same_selection_and_bytes(tmp_path):
    flags = ["--candidates", "dreambooth", "styleid", "styleid:styleid_gamma=0.5", "--screen-prompts", "1"]
    clean = tmp_path / "clean"
    assert _run(clean, flags) == 0
    selection = json.loads((clean / "selection.json").read_text())["styles"]["00"]
    scores = {spec: c["metrics"]["hist"] for spec, c in selection["candidates"].items()}
    assert selection["winner"] == max(scores, key=scores.get) and len(scores) == 3
    prompts = json.loads((ROOT / "demo/data/00/prompt.json").read_text())
    assert len(selection["prompts"]) == 1 and sorted((clean / "00").iterdir()) == sorted(
        clean / "00" / f"{p}.png" for p in prompts.values())
    winner_dir = selection["candidates"][selection["winner"]]["dir"]
    shot = selection["prompts"][0]
    assert (clean / "00" / f"{shot}.png").read_bytes() == (clean / winner_dir / "00" / f"{shot}.png").read_bytes()

    killed = tmp_path / "killed"
    # during screening: the first screening image is written; during scoring: the select task has started
    assert _run(killed, flags, lambda out: any((out / "work" / "screen").rglob("*.png"))) == -signal.SIGKILL
    assert not (killed / "selection.json").exists()
    assert _run(killed, flags, _log_has("start 00/select")) == -signal.SIGKILL
    assert _run(killed, flags) == 0
    manifest = json.loads((killed / "manifest.json").read_text())
    assert manifest["summary"]["already_done"] > 0
    assert _without_seconds(json.loads((killed / "selection.json").read_text())) == _without_seconds(
        json.loads((clean / "selection.json").read_text()))
    assert _images(killed) == _images(clean)
    assert not [p for p in killed.rglob("*") if is_temp(p)]
