"""The demo model's world, in numpy only: five shapes drawn in textures and palettes at 64 px.

Used by scripts/train_demo_model.py (the training images), scripts/make_demo_data.py (the demo styles,
whose textures and palettes are NOT among the training ones) and the style measures in tests/ and bench/
(the shape templates behind the shape IoU). An image = a plain background in the palette's first colour
and one shape, centred with a little jitter, filled with a texture in the palette's other two colours.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ["SIZE", "SHAPES", "TEXTURES", "PALETTES", "STYLE_TEXTURES", "STYLE_PALETTES", "shape_mask",
           "render", "random_scene"]

SIZE = 64
SHAPES = ("circle", "square", "triangle", "star", "house")


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    return x + 0.5, y + 0.5  # pixel centres


def _in_polygon(x: np.ndarray, y: np.ndarray, pts: list[tuple[float, float]]) -> np.ndarray:
    """Even-odd rule: a point is inside when a ray to +x crosses the polygon's edges an odd number of times."""
    inside = np.zeros(x.shape, bool)
    for (x1, y1), (x2, y2) in zip(pts, pts[1:] + pts[:1]):
        crosses = (y1 > y) != (y2 > y)
        with np.errstate(divide="ignore", invalid="ignore"):
            x_at = x1 + (y - y1) * (x2 - x1) / (y2 - y1)
        inside ^= crosses & (x < x_at)
    return inside


def shape_mask(shape: str, cx: float, cy: float, w: float, h: float, size: int = SIZE) -> np.ndarray:
    """Boolean [size, size] mask of `shape` filling the box of centre (cx, cy) and size w x h (pixels)."""
    x, y = _grid(size)
    u, v = (x - cx) / (w / 2), (y - cy) / (h / 2)  # the box is [-1, 1]^2
    if shape == "circle":
        return u * u + v * v <= 1.0
    if shape == "square":
        return (np.abs(u) <= 1) & (np.abs(v) <= 1)
    if shape == "triangle":
        return _in_polygon(u, v, [(0.0, -1.0), (1.0, 1.0), (-1.0, 1.0)])
    if shape == "star":
        ang = -np.pi / 2 + np.arange(10) * np.pi / 5  # five outer points, five inner ones
        rad = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
        pts = list(zip(rad * np.cos(ang), 0.1 + rad * np.sin(ang)))
        return _in_polygon(u, v, pts)
    if shape == "house":
        roof = _in_polygon(u, v, [(0.0, -1.0), (1.0, -0.2), (-1.0, -0.2)])
        body = (np.abs(u) <= 0.75) & (v >= -0.2) & (v <= 1.0)
        return roof | body
    raise ValueError(f"unknown shape {shape!r}; use one of {', '.join(SHAPES)}")


# --- textures: (x, y, rng) -> t in [0, 1] (0 = the palette's second colour, 1 = its third)


def _stripes(x, y, rng):
    a, period = rng.uniform(0, np.pi), rng.uniform(6, 11)
    return (np.sin(2 * np.pi * (x * np.cos(a) + y * np.sin(a)) / period) > 0).astype(float)


def _rings(x, y, rng):
    cx, cy, period = rng.uniform(24, 40), rng.uniform(24, 40), rng.uniform(6, 10)
    return (np.sin(2 * np.pi * np.hypot(x - cx, y - cy) / period) > 0).astype(float)


def _checks(x, y, rng):
    cell = rng.uniform(6, 10)
    ox, oy = rng.uniform(0, cell, 2)
    return ((np.floor((x + ox) / cell) + np.floor((y + oy) / cell)) % 2).astype(float)


def _dots(x, y, rng):
    cell = rng.uniform(7, 10)
    ox, oy = rng.uniform(0, cell, 2)
    fx, fy = (x + ox) % cell - cell / 2, (y + oy) % cell - cell / 2
    return (np.hypot(fx, fy) < cell * 0.3).astype(float)


def _flat(x, y, rng):
    return np.zeros_like(x)


# the demo styles' textures (never in training)
def _zigzag(x, y, rng):
    period, amp = rng.uniform(8, 12), rng.uniform(3, 5)
    tri = np.abs((x / period) % 1.0 - 0.5) * 2 * amp  # a triangle wave along x
    return (((y + tri) / (period / 1.5)) % 2 < 1).astype(float)


def _grid_lines(x, y, rng):
    cell, ox, oy = rng.uniform(8, 11), *rng.uniform(0, 8, 2)
    return ((((x + ox) % cell) < 2.5) | (((y + oy) % cell) < 2.5)).astype(float)


def _blobs(x, y, rng):
    field = np.zeros_like(x)
    for _ in range(4):  # a sum of random plane waves, thresholded: soft organic patches
        k, a, ph = rng.uniform(0.15, 0.3), rng.uniform(0, 2 * np.pi), rng.uniform(0, 2 * np.pi)
        field += np.sin(k * (x * np.cos(a) + y * np.sin(a)) + ph)
    return (field > 0).astype(float)


TEXTURES: dict[str, Callable] = {"stripes": _stripes, "rings": _rings, "checks": _checks, "dots": _dots,
                                 "flat": _flat}
STYLE_TEXTURES: dict[str, Callable] = {"zigzag": _zigzag, "grid": _grid_lines, "blobs": _blobs}

# (background, colour a, colour b), RGB uint8: the training palettes ...
PALETTES = (
    ((245, 240, 225), (200, 40, 40), (250, 200, 60)),
    ((30, 40, 70), (240, 240, 240), (90, 160, 230)),
    ((220, 235, 220), (30, 120, 60), (160, 210, 80)),
    ((250, 225, 230), (120, 40, 140), (240, 120, 170)),
    ((40, 30, 30), (240, 150, 40), (250, 240, 200)),
    ((200, 220, 245), (20, 60, 160), (250, 250, 250)),
    ((235, 235, 235), (30, 30, 30), (140, 140, 140)),
    ((250, 240, 200), (0, 140, 140), (240, 90, 60)),
)
# ... and the demo styles' (never in training): lime on purple, sepia, neon on black
STYLE_PALETTES = (
    ((70, 20, 90), (170, 230, 40), (250, 120, 220)),
    ((225, 200, 160), (110, 70, 40), (180, 120, 60)),
    ((10, 10, 15), (0, 255, 200), (255, 40, 120)),
)


def render(shape: str, texture: Callable, palette, rng: np.random.Generator, size: int = SIZE) -> np.ndarray:
    """One uint8 [size, size, 3] image: `shape` (random size/jitter) in `texture` and `palette` on its background."""
    s = rng.uniform(0.55, 0.8) * size
    cx, cy = size / 2 + rng.uniform(-4, 4), size / 2 + rng.uniform(-4, 4)
    mask = shape_mask(shape, cx, cy, s, s, size)
    x, y = _grid(size)
    bg, a, b = (np.asarray(c, np.float64) for c in palette)
    t = texture(x, y, rng)[..., None]
    fill = a * (1 - t) + b * t
    img = np.where(mask[..., None], fill, bg) + rng.normal(0, 3, (size, size, 3))
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def random_scene(rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """A training image and its caption: 'a {shape}', '{shape}', 'a {shape} in {texture} style', ..."""
    shape = SHAPES[rng.integers(len(SHAPES))]
    tex = list(TEXTURES)[rng.integers(len(TEXTURES))]
    palette = PALETTES[rng.integers(len(PALETTES))]
    image = render(shape, TEXTURES[tex], palette, rng)
    caption = ("a " if rng.random() < 0.5 else "") + shape + (f" in {tex} style" if rng.random() < 0.6 else "")
    return image, caption
