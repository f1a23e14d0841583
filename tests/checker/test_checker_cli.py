"""The CLI end to end: help, one-line errors with exit 2, result.json contents, the HTML report,
official vs fixed, check.sh, and no Jittor anywhere in the import graph."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from checker.cli import main, write_json_atomic
from checker.config import CheckerConfig
from checker.run import evaluate
from checker.synthetic import make_synthetic

ROOT = Path(__file__).resolve().parents[2]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JSTYLE_CHECKER")}
    env.update(PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", **extra)
    return env


def _cli(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "checker", *args], cwd=ROOT, env=_env(**env),
                          capture_output=True, text=True, timeout=600)


def test_help_is_useful() -> None:
    out = _cli("--help")
    assert out.returncode == 0
    for needle in ("--submission", "--random-weights", "official", "fixed", "dinov2-base", "JSTYLE_CHECKER_WEIGHTS",
                   "final ="):
        assert needle in out.stdout


def test_missing_weights_is_one_clear_error(tmp_path: Path) -> None:
    data, sub = make_synthetic(tmp_path, 1, 2, 2)
    out = _cli("--submission", str(sub), "--data", str(data), "--out", str(tmp_path / "r.json"),
               "--weights", str(tmp_path / "w"))
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert out.stderr.startswith("error: missing dino weights")
    for name in ("dinov2-base", "clip-vit-large-patch14", "clip_rn50.pt", "squeezenet1_1.pth", "pt_inception"):
        assert name in out.stderr
    assert not (tmp_path / "r.json").exists()


def test_bad_input_exits_2_with_one_line(tmp_path: Path) -> None:
    out = _cli("--submission", str(tmp_path), "--data", str(tmp_path / "nodata"), "--random-weights")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "nodata" in out.stderr


def test_checker_never_imports_jittor() -> None:
    code = ("import sys, checker.cli, checker.run, checker.dino, checker.hist, checker.lpips, checker.fid, "
            "checker.clip_iqa, checker.clip_r, checker.report, checker.synthetic; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('jittor', 'jstyle')]; print(bad); assert not bad")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_env(), capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_check_sh_random_weights_subset(tmp_path: Path) -> None:
    """The real CLI path through check.sh: random builds, three cheap metrics, exit 0."""
    data, sub = make_synthetic(tmp_path, 2, 2, 2, size=48)
    out = subprocess.run(["bash", str(ROOT / "check.sh"), "--submission", str(sub), "--data", str(data),
                          "--out", str(tmp_path / "r.json"), "--random-weights", "--metrics", "hist,lpips,fid",
                          "--device", "cpu"], cwd=tmp_path, env=_env(JSTYLE_CHECKER_PYTHON=sys.executable),
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert "MEANINGLESS" in out.stdout and "MEANINGLESS" in out.stderr
    res = json.loads((tmp_path / "r.json").read_text())
    assert set(res["metrics"]) == {"hist", "lpips", "fid"} and res["final_score"] is None
    assert res["random_weights"] is True and "MEANINGLESS" in res["WARNING"]


def test_full_run_in_process(tmp_path: Path, backbones, capsys: pytest.CaptureFixture) -> None:
    data, sub = make_synthetic(tmp_path, 2, 2, 2, size=64)
    rc = main(["--submission", str(sub), "--data", str(data), "--out", str(tmp_path / "out" / "result.json"),
               "--report", str(tmp_path / "report.html"), "--random-weights", "--device", "cpu", "--quiet"],
              backbones=backbones)
    assert rc == 0
    printed = capsys.readouterr().out
    assert "final" in printed and "MEANINGLESS" in printed
    res = json.loads((tmp_path / "out" / "result.json").read_text())
    assert set(res["metrics"]) == {"dino", "hist", "lpips", "fid", "clip_iqa", "clip_r"}
    assert all(isinstance(v, float) for v in res["metrics"].values())
    assert isinstance(res["final_score"], float) and "MEANINGLESS" in res["WARNING"]
    img = res["styles"]["01"]["images"]
    assert len(img) == 2
    for per in img.values():
        assert {"dino", "hist", "hist_rgb", "hist_hsv", "lpips", "clip_iqa", "clip_r_rank", "clip_r_hit"} <= set(per)
    assert res["metrics"]["fid"] == res["styles"]["01"]["fid"]  # official: last style only
    html = (tmp_path / "report.html").read_text()
    assert html.count("data:image/jpeg;base64") == 8 and "MEANINGLESS" in html
    assert not list((tmp_path / "out").glob("*.tmp"))


def test_official_vs_fixed(tmp_path: Path, backbones) -> None:
    data, sub = make_synthetic(tmp_path, 3, 3, 3, size=64)
    runs = {}
    for mode in ("official", "fixed"):
        out = tmp_path / f"{mode}.json"
        assert main(["--submission", str(sub), "--data", str(data), "--out", str(out), "--mode", mode,
                     "--metrics", "hist,fid", "--random-weights", "--quiet"], backbones=backbones) == 0
        runs[mode] = json.loads(out.read_text())
    per_style = [runs["fixed"]["styles"][s]["fid"] for s in ("00", "01", "02")]
    assert [runs["official"]["styles"][s]["fid"] for s in ("00", "01", "02")] == per_style
    assert runs["official"]["metrics"]["fid"] == per_style[-1]
    assert runs["fixed"]["metrics"]["fid"] == pytest.approx(sum(per_style) / 3)
    assert runs["official"]["metrics"]["hist"] != runs["fixed"]["metrics"]["hist"]
    out = tmp_path / "override.json"
    main(["--submission", str(sub), "--data", str(data), "--out", str(out), "--fid-mode", "all-styles",
          "--metrics", "fid", "--random-weights", "--quiet"], backbones=backbones)
    assert json.loads(out.read_text())["metrics"]["fid"] == pytest.approx(runs["fixed"]["metrics"]["fid"])


def test_atomic_json_and_non_finite(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    write_json_atomic({"a": float("nan"), "b": [1.0, float("inf")]}, path)
    assert json.loads(path.read_text()) == {"a": None, "b": [1.0, None]}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(tmp_path: Path, backbones) -> None:
    data, sub = make_synthetic(tmp_path, 2, 3, 3, size=96)
    res = {}
    for dev in ("cpu", "cuda"):
        cfg = CheckerConfig(submission=sub, data=data, device=dev, random_weights=True)
        res[dev] = evaluate(cfg, backbones)["metrics"]
        for m in ("dino", "lpips", "inception", "clip_rn50", "clip"):  # evaluate moved them; bring back
            getattr(backbones, m).to("cpu")
    for k, v in res["cpu"].items():
        assert res["cuda"][k] == pytest.approx(v, rel=1e-3, abs=1e-4), k  # fp32 kernels differ slightly
