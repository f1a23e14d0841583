"""The final formula against the spec's published metric sets (tolerance 1e-4, the published
precision), and the aggregation rules."""

from __future__ import annotations

import math

import pytest

from checker.config import METRICS
from checker.score import aggregate_fid, final_from, final_score, mean_or_none

PUBLISHED = [  # (dino, hist, lpips, fid, clip_iqa, clip_r) -> final, from docs of the challenge
    ((0.1130, 0.4388, 0.5391, 1.7101, 0.7567, 0.8293), 0.3274),  # list A baseline DreamBooth-LoRA
    ((0.1202, 0.7791, 0.4287, 1.6746, 0.7577, 0.9307), 0.5121),  # list A best public recipe
    ((0.1737, 0.7144, 0.4154, 3.272, 0.7463, 0.8586), 0.4648),  # list B best public
]


@pytest.mark.parametrize("metrics,final", PUBLISHED)
def test_published_final_scores(metrics: tuple[float, ...], final: float) -> None:
    dino, hist, lpips, fid, clip_iqa, clip_r = metrics
    assert final_score(dino=dino, hist=hist, lpips=lpips, fid=fid, clip_iqa=clip_iqa, clip_r=clip_r) == pytest.approx(
        final, abs=1e-4)
    named = dict(zip(("dino", "hist", "lpips", "fid", "clip_iqa", "clip_r"), metrics))
    assert final_from(named) == pytest.approx(final, abs=1e-4)


def test_fid_is_capped_at_20() -> None:
    assert final_score(0.5, 0.5, 0.5, 20.0, 0.5, 0.5) == final_score(0.5, 0.5, 0.5, 400.0, 0.5, 0.5)
    assert final_score(1, 1, 0, 0, 1, 1) == pytest.approx(1.0)


def test_final_needs_all_six() -> None:
    full = dict(dino=0.1, hist=0.4, lpips=0.5, fid=2.0, clip_iqa=0.7, clip_r=0.8)
    assert final_from({**full, "fid": None}) is None
    assert final_from({**full, "hist": math.nan}) is None
    assert final_from({k: v for k, v in full.items() if k != "dino"}) is None


def test_aggregation_rules() -> None:
    assert aggregate_fid([1.0, None, 4.0], "last-style") == 4.0
    assert aggregate_fid([1.0, None, 4.0], "all-styles") == 2.5
    assert aggregate_fid([1.0, None], "last-style") is None
    assert mean_or_none([None, None]) is None
    assert mean_or_none([0.25, None, 0.75]) == 0.5


def test_metric_table() -> None:
    assert {k for k, m in METRICS.items() if m.higher_is_better} == {"dino", "hist", "clip_iqa", "clip_r"}
    assert [m.key for m in METRICS.values()] == [
        "dino_score", "hist_score", "lpip_score", "fid_score", "clip_iqa_score", "clip_r_score"]
