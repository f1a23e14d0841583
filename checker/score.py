"""The challenge's final score and the style-level aggregation rules (pure functions)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

__all__ = ["FID_CAP", "REQUIRED", "final_score", "final_from", "mean_or_none", "aggregate_fid"]

FID_CAP = 20.0
REQUIRED = ("dino", "hist", "lpips", "fid", "clip_iqa", "clip_r")


def final_score(dino: float, hist: float, lpips: float, fid: float, clip_iqa: float, clip_r: float) -> float:
    """(0.2 dino + 0.4 hist + 0.4 (1 - lpips)) * (0.5 clip_r + 0.4 (20 - min(fid, 20)) / 20 + 0.1 clip_iqa)."""
    style = 0.2 * dino + 0.4 * hist + 0.4 * (1 - lpips)
    content = 0.5 * clip_r + 0.4 * (FID_CAP - min(fid, FID_CAP)) / FID_CAP + 0.1 * clip_iqa
    return style * content


def final_from(metrics: Mapping[str, float | None]) -> float | None:
    """final_score of a metric dict, or None when any of the six is missing / not finite."""
    vals = [metrics.get(k) for k in REQUIRED]
    if any(v is None or not math.isfinite(v) for v in vals):
        return None
    return final_score(*vals)  # type: ignore[arg-type]


def mean_or_none(values: Sequence[float | None]) -> float | None:
    """Mean of the defined values (styles with no usable images are skipped), None if none."""
    vals = [float(v) for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def aggregate_fid(per_style: Sequence[float | None], mode: str) -> float | None:
    """Per-style rules: last-style = the last evaluated style's FID (the bug of the unused
    fid_api_old.py); per-style-mean = the mean. ``pooled`` is computed from features (checker.fid)."""
    if mode == "pooled":
        raise ValueError("pooled FID is not an aggregate of per-style FIDs; use checker.fid.pooled_fid")
    if mode == "last-style":
        return per_style[-1] if per_style else None
    return mean_or_none(per_style)
