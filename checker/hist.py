"""hist_score: OpenCV colour-histogram correlation (RGB 4096-bin + HSV 72-bin), no resize.

Per style: H_ref = mean of the references' raw count histograms; each part = mean over generated
images of corr(H_ref, H_g) (cv2.HISTCMP_CORREL); style score = (rgb + hsv) / 2.

Official quirks (``wraps=True``), from the original's uint8 arithmetic:
- RGB index B*256 + G*16 + R is computed in uint8, so B drops out: index = G*16 + R (bins 0..255);
- hue is doubled in uint8 (h = 2*h mod 256: 179 -> 102) before binning by degrees;
- ``calcHist(..., [72], [0, 71])`` drops the code 71 (H=7, S=2, V=2).
Fixed mode computes the intended 4096 RGB bins, the true hue in degrees and all 72 HSV codes.
"""

from __future__ import annotations

import cv2
import numpy as np

from checker.data import StyleData
from checker.metric import Metric, Run, StyleScore

__all__ = [
    "METRIC",
    "RGB_BINS",
    "HSV_BINS",
    "rgb_histogram",
    "hsv_histogram",
    "hist_correl",
    "histograms",
    "hist_style_scores",
]

RGB_BINS = 4096
HSV_BINS = 72
# hue bins by degree, as (low, high]: (315,20]->0, (20,40]->1, ..., (295,315]->7
_HUE_EDGES = (20, 40, 75, 155, 190, 270, 295, 315)


def rgb_histogram(bgr: np.ndarray, wraps: bool) -> np.ndarray:
    """4096-bin count histogram of index = B16*256 + G16*16 + R16 (uint8 wrap -> G16*16 + R16)."""
    q = (bgr // 16).astype(np.int64)
    idx = q[..., 0] * 256 + q[..., 1] * 16 + q[..., 2]
    if wraps:
        idx = idx % 256  # the original computed the index in uint8
    return np.bincount(idx.ravel(), minlength=RGB_BINS).astype(np.float64)


def _hue_bin(h_deg: np.ndarray) -> np.ndarray:
    # bin k covers (edge[k-1], edge[k]]; > 315 folds back to bin 0
    return np.searchsorted(np.asarray(_HUE_EDGES), h_deg, side="left") % 8


def _sv_bin(x: np.ndarray) -> np.ndarray:
    # <= 51 -> 0, <= 178 -> 1, else 2
    return (x > 51).astype(np.int64) + (x > 178).astype(np.int64)


def hsv_histogram(bgr: np.ndarray, wraps: bool) -> np.ndarray:
    """72-bin count histogram of g = 9*H + 3*S + V from cv2 BGR2HSV (H in degrees = 2*h)."""
    hsv = cv2.cvtColor(np.ascontiguousarray(bgr), cv2.COLOR_BGR2HSV).astype(np.int64)
    h = 2 * hsv[..., 0]
    if wraps:
        h = h % 256  # doubled in uint8 by the original
    g = 9 * _hue_bin(h) + 3 * _sv_bin(hsv[..., 1]) + _sv_bin(hsv[..., 2])
    hist = np.bincount(g.ravel(), minlength=HSV_BINS).astype(np.float64)
    if wraps:
        hist[HSV_BINS - 1] = 0.0  # calcHist(range [0, 71)) drops the code 71
    return hist


def hist_correl(h1: np.ndarray, h2: np.ndarray) -> float:
    """cv2.HISTCMP_CORREL: (s12 - s1*s2/n) / sqrt((s11 - s1^2/n)(s22 - s2^2/n)), 1 if degenerate."""
    h1, h2 = np.asarray(h1, np.float64).ravel(), np.asarray(h2, np.float64).ravel()
    n = h1.size
    s1, s2 = h1.sum(), h2.sum()
    num = float(h1 @ h2 - s1 * s2 / n)
    denom2 = float((h1 @ h1 - s1 * s1 / n) * (h2 @ h2 - s2 * s2 / n))
    return num / np.sqrt(denom2) if abs(denom2) > np.finfo(np.float64).eps else 1.0


def histograms(rgb: np.ndarray, wraps: bool) -> tuple[np.ndarray, np.ndarray]:
    """(rgb_hist, hsv_hist) of one RGB uint8 image (converted to OpenCV's BGR first)."""
    bgr = np.ascontiguousarray(rgb[..., ::-1])
    return rgb_histogram(bgr, wraps), hsv_histogram(bgr, wraps)


def hist_style_scores(
    gen: list[tuple[np.ndarray, np.ndarray]], ref: list[tuple[np.ndarray, np.ndarray]]
) -> tuple[np.ndarray, np.ndarray]:
    """Per generated image (rgb_corr, hsv_corr) against the mean reference histograms."""
    ref_rgb = np.mean([r[0] for r in ref], axis=0)  # H_ref = mean of raw count histograms
    ref_hsv = np.mean([r[1] for r in ref], axis=0)
    rgb = np.array([hist_correl(ref_rgb, g[0]) for g in gen])
    hsv = np.array([hist_correl(ref_hsv, g[1]) for g in gen])
    return rgb, hsv


def score_style(state: None, sd: StyleData, run: Run) -> StyleScore:
    """Style score (rgb + hsv) / 2 of the mean correlations; per image rgb, hsv and their mean."""
    if not sd.usable:
        return StyleScore()
    wraps = run.cfg.hist_wraps
    rgb, hsv = hist_style_scores([histograms(g.rgb, wraps) for g in sd.gens],
                                 [histograms(r.rgb, wraps) for r in sd.refs])
    return StyleScore(float((rgb.mean() + hsv.mean()) / 2),
                      images={"hist_rgb": rgb, "hist_hsv": hsv, "hist": (rgb + hsv) / 2},
                      extra={"hist_rgb": float(rgb.mean()), "hist_hsv": float(hsv.mean())})


METRIC = Metric("hist", "hist_score", True, "OpenCV RGB + HSV histogram correlation", score_style=score_style)
