"""The driver is metric-agnostic: a toy metric registered here, in the test, goes through build, start,
score_style and aggregate into result.json and the table, with no edit to checker/run.py."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from checker.config import CheckerConfig
from checker.data import Problem, StyleData
from checker.errors import CheckerError
from checker.metric import Backbones, Metric, Run, StyleScore
from checker.metrics import METRICS
from checker.report import summary_table
from checker.run import evaluate, load_backbones
from checker.synthetic import make_synthetic
from tests.tolerance import assert_close

ROOT = Path(__file__).resolve().parents[2]
EPS64 = float(np.finfo(np.float64).eps)
LUMA = (0.299, 0.587, 0.114)  # Rec. 601 weights


def _build(paths, seed: int) -> dict[str, np.ndarray]:
    return {"luma": np.asarray(LUMA)}  # the toy "backbone": built once by load_backbones, no weight slot


def _start(bb: Backbones, run: Run) -> np.ndarray:
    return bb.luma


def _brightness(luma: np.ndarray, sd: StyleData, run: Run) -> StyleScore:
    """Mean luma in [0, 1] per generated image: mean_px(0.299 R + 0.587 G + 0.114 B) / 255."""
    if not sd.gens:
        return StyleScore()
    per = [float((g.rgb.astype(np.float64) @ luma).mean() / 255) for g in sd.gens]
    return StyleScore(float(np.mean(per)), images={"brightness": per}, extra={"brightness_max": max(per)})


def _brightest_style(scores: Sequence[StyleScore], run: Run) -> tuple[float | None, tuple[Problem, ...]]:
    """The toy's own aggregate: the brightest style, plus one problem naming how many styles counted."""
    vals = [s.value for s in scores if s.value is not None]
    return max(vals), (Problem("toy", "brightness", f"{len(vals)} styles"),)


BRIGHTNESS = Metric("brightness", "brightness_score", True, "mean luma of the generated images",
                    score_style=_brightness, build=_build, start=_start, aggregate=_brightest_style)


def test_a_toy_metric_reaches_the_scores(tmp_path: Path) -> None:
    data, sub = make_synthetic(tmp_path, 2, 3, 2, size=32)
    registry = {**METRICS, BRIGHTNESS.name: BRIGHTNESS}
    cfg = CheckerConfig(submission=sub, data=data, metrics=("hist", "brightness"), random_weights=True)
    bb = load_backbones(cfg, registry=registry)
    assert set(bb.models) == {"luma"} and bb.sources == {}  # hist builds nothing, the toy no weight slot
    res = evaluate(cfg, bb, registry=registry)

    # expected straight from the PNGs, by linearity: 0.299 mean(R) + 0.587 mean(G) + 0.114 mean(B). Both sides
    # are float64 sums of 32 x 32 pixels in other orders (weighted sum per pixel, then mean; or mean per channel,
    # then weighted): each sum rounds by <= 1024 eps64 relative; 4 sums: 4 x 1024 eps64 = 9.1e-13 relative.
    def luma_of(path: Path) -> float:
        rgb = np.asarray(Image.open(path).convert("RGB"), dtype=np.float64)
        return sum(w * rgb[..., c].mean() for c, w in enumerate(LUMA)) / 255

    rtol = 4 * 1024 * EPS64
    style_means = []
    for style in ("00", "01"):
        files = sorted((sub / style).glob("*.png"))
        want = [luma_of(p) for p in files]
        st = res["styles"][style]
        got = [st["images"][p.name]["brightness"] for p in files]
        assert_close(got, want, rtol=rtol, what=f"per-image brightness, style {style}")
        assert_close(st["brightness"], np.mean(want), rtol=rtol, what=f"style brightness {style}")
        assert_close(st["brightness_max"], max(want), rtol=rtol, what=f"extra field {style}")
        assert "hist" in st["images"][files[0].name]  # the built-in metric beside it is untouched
        style_means.append(np.mean(want))
    # the metric's own aggregate (max over styles), not the default mean: the two styles differ by far more
    # than rtol (different palettes), so a mean would fail
    assert abs(style_means[0] - style_means[1]) > 1e-3
    assert_close(res["metrics"]["brightness"], max(style_means), rtol=rtol, what="aggregate = brightest style")
    assert {"kind": "toy", "path": "brightness", "message": "2 styles"} in res["problems"]
    assert res["original_keys"]["brightness"] == "brightness_score" and res["higher_is_better"]["brightness"]
    assert res["final_score"] is None  # the final score needs the six, whatever else is scored
    table = summary_table(res).splitlines()
    assert any(line.startswith("brightness") and line.endswith("brightness_score") for line in table)
    assert next(line for line in table if line.startswith("style")).split()[-2:] == ["hist", "brightness"]

    # registering is passing the registry: nothing global changed, the default registry does not know it
    with pytest.raises(CheckerError, match="--metrics brightness: unknown"):
        evaluate(cfg, bb)


def test_the_driver_names_no_metric() -> None:
    """checker/run.py quotes no metric name (no per-metric if-chain or special case left)."""
    src = (ROOT / "checker" / "run.py").read_text(encoding="utf-8")
    quoted = re.findall(r"""["'](\w+)["']""", src)
    assert quoted and not set(quoted) & set(METRICS), sorted(set(quoted) & set(METRICS))
