"""Style and content measures for the demo model, in numpy only (both envs; tests/ and bench/quality.py).

- `hist_score(images, refs)`: the checker's colour-histogram score, transcribed from checker/hist.py
  (official mode: RGB index G*16 + R after the uint8 wrap, hue doubled in uint8, HSV code 71 dropped;
  cv2.HISTCMP_CORREL; score = (rgb + hsv) / 2 against the mean reference histograms). cv2's BGR2HSV is
  written out in float64 with round-half-up, so a pixel on a bin edge may bin differently from OpenCV's
  fixed-point tables: tests/checker/test_style_measures.py bounds the gap against checker/hist.py.
- `foreground(image)`: the shape's mask (pixels far from the background colour read off the border, specks
  under 1/50 of the image dropped, holes filled), `shape_iou(image, shape)`: IoU of that mask with the shape's
  template fitted to the mask's box, `best_shape(image)`: the shape whose template fits best, `mask_iou(a, b)`.
"""

from __future__ import annotations

import sys
from collections import deque
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from demo_shapes import SHAPES, shape_mask  # noqa: E402

__all__ = ["hist_score", "rgb_hsv_histograms", "foreground", "mask_iou", "shape_iou", "best_shape", "shape_ious"]

_HUE_EDGES = np.array([20, 40, 75, 155, 190, 270, 295, 315])  # checker/hist.py: bin k covers (edge[k-1], edge[k]]


def _hsv_u8(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """cv2.COLOR_BGR2HSV on uint8: V = max, S = 255 (V - min) / V, H = 60-degree sectors / 2 (0..179)."""
    c = rgb.astype(np.float64)
    r, g, b = c[..., 0], c[..., 1], c[..., 2]
    v = c.max(-1)
    diff = v - c.min(-1)
    s = np.where(v > 0, np.floor(255.0 * diff / np.maximum(v, 1) + 0.5), 0)
    d = np.maximum(diff, 1)
    h = np.where(v == r, 60.0 * (g - b) / d, np.where(v == g, 120.0 + 60.0 * (b - r) / d, 240.0 + 60.0 * (r - g) / d))
    h = np.where(diff == 0, 0.0, np.where(h < 0, h + 360.0, h))
    h = np.floor(h / 2.0 + 0.5) % 180
    return h.astype(np.int64), s.astype(np.int64), v.astype(np.int64)


def rgb_hsv_histograms(rgb: np.ndarray, wraps: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """checker/hist.py's (4096-bin RGB, 72-bin HSV) count histograms of one uint8 RGB image."""
    q = (rgb // 16).astype(np.int64)
    idx = q[..., 2] * 256 + q[..., 1] * 16 + q[..., 0]  # B*256 + G*16 + R
    if wraps:
        idx = idx % 256
    rgb_hist = np.bincount(idx.ravel(), minlength=4096).astype(np.float64)
    h, s, v = _hsv_u8(rgb)
    h = 2 * h
    if wraps:
        h = h % 256
    hue = np.searchsorted(_HUE_EDGES, h, side="left") % 8
    g = 9 * hue + 3 * ((s > 51).astype(np.int64) + (s > 178)) + ((v > 51).astype(np.int64) + (v > 178))
    hsv_hist = np.bincount(g.ravel(), minlength=72).astype(np.float64)
    if wraps:
        hsv_hist[71] = 0.0
    return rgb_hist, hsv_hist


def _correl(h1: np.ndarray, h2: np.ndarray) -> float:
    # cv2.HISTCMP_CORREL: (s12 - s1 s2 / n) / sqrt((s11 - s1^2 / n)(s22 - s2^2 / n))
    n, s1, s2 = h1.size, h1.sum(), h2.sum()
    denom2 = (h1 @ h1 - s1 * s1 / n) * (h2 @ h2 - s2 * s2 / n)
    return float((h1 @ h2 - s1 * s2 / n) / np.sqrt(denom2)) if abs(denom2) > np.finfo(np.float64).eps else 1.0


def hist_score(images, refs, wraps: bool = True) -> float:
    """Mean over `images` of (corr_rgb + corr_hsv) / 2 against the mean histograms of `refs` (uint8 RGB each)."""
    ref = [rgb_hsv_histograms(np.asarray(r), wraps) for r in refs]
    ref_rgb, ref_hsv = np.mean([r[0] for r in ref], axis=0), np.mean([r[1] for r in ref], axis=0)
    scores = []
    for im in images:
        h_rgb, h_hsv = rgb_hsv_histograms(np.asarray(im), wraps)
        scores.append((_correl(ref_rgb, h_rgb) + _correl(ref_hsv, h_hsv)) / 2)
    return float(np.mean(scores))


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """Pixels not reachable from the border through ~mask are inside: flood fill by repeated 4-neighbour growth."""
    free = ~mask
    outside = np.zeros_like(mask)
    outside[0, :], outside[-1, :], outside[:, 0], outside[:, -1] = free[0, :], free[-1, :], free[:, 0], free[:, -1]
    while True:
        grown = outside.copy()
        grown[1:] |= outside[:-1]
        grown[:-1] |= outside[1:]
        grown[:, 1:] |= outside[:, :-1]
        grown[:, :-1] |= outside[:, 1:]
        grown &= free
        if (grown == outside).all():
            return ~outside
        outside = grown


def _drop_specks(mask: np.ndarray, min_pixels: int) -> np.ndarray:
    """The mask without its 4-connected components of fewer than min_pixels pixels."""
    keep = np.zeros_like(mask)
    seen = np.zeros_like(mask)
    h, w = mask.shape
    for y0, x0 in zip(*np.nonzero(mask)):
        if seen[y0, x0]:
            continue
        seen[y0, x0] = True
        queue, part = deque([(y0, x0)]), []
        while queue:
            y, x = queue.popleft()
            part.append((y, x))
            for yy, xx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= yy < h and 0 <= xx < w and mask[yy, xx] and not seen[yy, xx]:
                    seen[yy, xx] = True
                    queue.append((yy, xx))
        if len(part) >= min_pixels:
            keep[tuple(np.array(part).T)] = True
    return keep


def foreground(image: np.ndarray, threshold: float = 60.0) -> np.ndarray:
    """The shape's mask: |pixel - median border colour| (RGB, Euclidean) > threshold, specks of fewer than 1/50 of
    the pixels dropped (the VAE's stray border pixels would stretch the mask's box), holes filled."""
    im = np.asarray(image, np.float64)
    border = np.concatenate([im[0], im[-1], im[:, 0], im[:, -1]])
    bg = np.median(border, axis=0)
    mask = np.linalg.norm(im - bg, axis=-1) > threshold
    return _fill_holes(_drop_specks(mask, mask.size // 50))


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """|a & b| / |a | b| (1 when both are empty)."""
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def shape_ious(image: np.ndarray) -> dict[str, float]:
    """IoU of the image's foreground with each shape's template drawn in the foreground's bounding box."""
    mask = foreground(image)
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return {s: 0.0 for s in SHAPES}
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    size = mask.shape[0]
    return {s: mask_iou(mask, shape_mask(s, (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0, size)) for s in SHAPES}


def shape_iou(image: np.ndarray, shape: str) -> float:
    """How well the image shows `shape`: its template's IoU with the foreground (see shape_ious)."""
    return shape_ious(image)[shape.lower()]


def best_shape(image: np.ndarray) -> str:
    """The shape whose template fits the image's foreground best."""
    ious = shape_ious(image)
    return max(ious, key=ious.get)
