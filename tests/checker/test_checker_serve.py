"""checker.serve: the scorer that stays loaded gives check.sh's numbers, builds each backbone once, and
answers bad requests with one line."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

from checker.metrics import METRICS
from checker.serve import Scorer
from checker.synthetic import make_synthetic
from tests.tolerance import assert_close

ROOT = Path(__file__).resolve().parents[2]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JSTYLE_CHECKER")}
    return {**env, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "JSTYLE_CHECKER_PYTHON": sys.executable}


def test_scorer_equals_check_sh_on_the_same_images(tmp_path: Path) -> None:
    """Six metrics and the final of one style, all prompts and a screening subset, from a scorer process
    and from check.sh (both random weights, seed 0, CPU)."""
    data, sub = make_synthetic(tmp_path, 2, 3, 3, size=64)
    words = list(json.loads((data / "01" / "prompt.json").read_text()).values())
    (sub / "01" / f"{words[2]}.png").unlink()  # the screening case: two of the three prompts generated
    subset = words[:2]
    proc = subprocess.Popen([sys.executable, "-m", "checker.serve", "--random-weights", "--device", "cpu"], cwd=ROOT,
                            env=_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        assert json.loads(proc.stdout.readline())["ready"] is True
        answers = {}
        for style, prompts in (("00", None), ("01", subset)):
            proc.stdin.write(json.dumps({"submission": str(sub), "data": str(data), "style": style,
                                         "prompts": prompts}) + "\n")
            proc.stdin.flush()
            answers[style] = json.loads(proc.stdout.readline())
    finally:
        proc.stdin.close()
        proc.wait(timeout=60)
    assert proc.returncode == 0
    for style, extra in (("01", ["--prompts", ",".join(subset)]),):  # one check.sh call: its backbones cost minutes
        out = tmp_path / f"check-{style}.json"
        run = subprocess.run(["bash", str(ROOT / "check.sh"), "--submission", str(sub), "--data", str(data),
                              "--out", str(out), "--random-weights", "--device", "cpu", "--styles", style, "--quiet",
                              *extra], cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stderr
        want = json.loads(out.read_text())
        got = answers[style]
        assert got["ok"] and got["loads"] == 1 and set(got["metrics"]) == set(METRICS)
        # the same function (checker.run.evaluate) on the same files with the same seeded backbones in two
        # processes of one machine: the same float operations in the same order (CPU kernels at a fixed thread
        # count are deterministic); 1e-12 leaves room only for a JSON float print/parse, which round-trips exactly
        assert_close([got["metrics"][m] for m in METRICS], [want["metrics"][m] for m in METRICS], atol=1e-12,
                     what=f"scorer vs check.sh, style {style}")
        assert_close(got["final"], want["final_score"], atol=1e-12, what=f"final, style {style}")
    assert answers["01"]["metrics"]["clip_r"] in (0.0, 0.5, 1.0)  # out of the 2 screened prompts, not of 3


def _counting(registry):
    calls: dict[str, int] = {}

    def wrap(name, build):
        def counted(paths, seed):
            calls[name] = calls.get(name, 0) + 1
            return build(paths, seed)
        return counted

    return {n: dataclasses.replace(m, build=wrap(n, m.build) if m.build else None) for n, m in registry.items()}, calls


def test_a_style_scored_twice_loads_the_backbones_once(tmp_path: Path) -> None:
    data, sub = make_synthetic(tmp_path, 2, 2, 2, size=48)
    # the CLIP backbones (ViT-L/14 and RN50 at random) take minutes to build here: the other four show the count
    registry, calls = _counting({n: m for n, m in METRICS.items() if not n.startswith("clip")})
    scorer = Scorer("cpu", random_weights=True, registry=registry)
    hist_only = scorer.score({"submission": str(sub), "data": str(data), "style": "00", "metrics": ["hist"]})
    assert calls == {} and scorer.loads == 0 and hist_only["final"] is None  # hist has no backbone
    first = scorer.score({"submission": str(sub), "data": str(data), "style": "00"})
    second = scorer.score({"submission": str(sub), "data": str(data), "style": "00"})
    other = scorer.score({"submission": str(sub), "data": str(data), "style": "01"})
    assert calls == {"dino": 1, "lpips": 1, "fid": 1} and scorer.loads == 1
    assert second["metrics"] == first["metrics"] and other["metrics"] != first["metrics"]
    assert first["metrics"]["hist"] == hist_only["metrics"]["hist"]
    assert first["final"] is None and isinstance(first["metrics"]["dino"], float)  # the final needs all six


def test_bad_request_is_one_line_and_the_scorer_goes_on(tmp_path: Path) -> None:
    from io import StringIO

    from checker.serve import serve

    data, sub = make_synthetic(tmp_path, 1, 2, 2, size=32)
    lines = [json.dumps({"submission": str(sub), "data": str(data), "style": "07", "metrics": ["hist"]}),
             json.dumps({"submission": str(sub), "data": str(data), "style": "00", "metrics": ["hist"],
                         "prompts": ["NotAWord"]}),
             "not json",
             json.dumps({"submission": str(sub), "data": str(data), "style": "00", "metrics": ["hist"]})]
    out = StringIO()
    serve(Scorer("cpu", random_weights=True), StringIO("\n".join(lines) + "\n"), out)
    answers = [json.loads(a) for a in out.getvalue().splitlines()]
    assert [a["ok"] for a in answers] == [False, False, False, True]
    assert "07" in answers[0]["error"] and "NotAWord" in answers[1]["error"]
    assert 0.0 < answers[3]["metrics"]["hist"] <= 1.0
