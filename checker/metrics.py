"""The challenge's six metrics, in the order of the result table: the list ``checker.run`` loops over.

A new metric is one module exporting ``METRIC = Metric(...)`` (``checker.metric``) plus one entry here
(and a ``WeightSlot`` in ``checker.weights`` if it loads weights); ``checker.run`` does not change.
"""

from __future__ import annotations

from checker import clip_iqa, clip_r, dino, fid, hist, lpips
from checker.metric import Metric

__all__ = ["METRICS"]

METRICS: dict[str, Metric] = {m.METRIC.name: m.METRIC for m in (dino, hist, lpips, fid, clip_iqa, clip_r)}
