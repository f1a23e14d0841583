"""Synthetic dataset + submission in the challenge layout, for demos, tests and the benchmark.

``python -m checker.synthetic OUT [--styles 15] [--images 25] [--refs 10] [--size 512]`` writes
``OUT/data/<style>/{images/*.png, prompt.json}`` and ``OUT/submission/<style>/<Prompt>.png``.
Images are smooth colour fields with a few shapes in a per-style palette (seeded, no network).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["WORDS", "synthetic_image", "make_synthetic"]

WORDS = (
    "Dolphin", "Bread", "Lion", "Car", "Tree", "House", "Cat", "Dog", "Apple", "Bicycle", "Clock", "Flower",
    "Guitar", "Horse", "Mountain", "Owl", "Piano", "Rabbit", "Ship", "Train", "Umbrella", "Violin", "Whale",
    "Zebra", "Castle", "Bridge", "Candle", "Elephant", "Fox", "Giraffe",
)


def synthetic_image(rng: np.random.Generator, palette: np.ndarray, size: int) -> np.ndarray:
    """(size, size, 3) uint8: a two-colour gradient plus random ellipses/rectangles from ``palette``."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1)
    a, b = palette[rng.integers(len(palette), size=2)]
    t = (xx * rng.uniform(-1, 1) + yy * rng.uniform(-1, 1)) % 1.0
    img = (a[None, None] * (1 - t[..., None]) + b[None, None] * t[..., None]).astype(np.uint8)
    im = Image.fromarray(img)
    draw = ImageDraw.Draw(im)
    for _ in range(int(rng.integers(2, 6))):
        x0, y0 = rng.integers(0, size, 2)
        w, h = rng.integers(size // 8, size // 2, 2)
        color = tuple(int(c) for c in palette[rng.integers(len(palette))])
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x0, y0, x0 + w, y0 + h], fill=color)
    noise = rng.normal(0, 6, (size, size, 3))
    return np.clip(np.asarray(im, np.float32) + noise, 0, 255).astype(np.uint8)


def make_synthetic(out: Path, n_styles: int = 2, n_images: int = 3, n_refs: int = 2, size: int = 64,
                   seed: int = 0, ref_size: int | None = None) -> tuple[Path, Path]:
    """Write a dataset and a matching submission under ``out``; returns (data, submission)."""
    rng = np.random.default_rng(seed)
    data, sub = out / "data", out / "submission"
    for s in range(n_styles):
        style = f"{s:02d}"
        palette = rng.integers(0, 256, (4, 3)).astype(np.float32)
        words = [WORDS[(s * 7 + i) % len(WORDS)] for i in range(n_images)]
        (data / style / "images").mkdir(parents=True, exist_ok=True)
        (sub / style).mkdir(parents=True, exist_ok=True)
        (data / style / "prompt.json").write_text(json.dumps({str(i): w for i, w in enumerate(words)}))
        for r in range(n_refs):
            ref = synthetic_image(rng, palette, ref_size or size)
            Image.fromarray(ref).save(data / style / "images" / f"{r:03d}.png")
        for w in words:
            Image.fromarray(synthetic_image(rng, palette, size)).save(sub / style / f"{w}.png")
    return data, sub


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m checker.synthetic", description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--styles", type=int, default=15)
    p.add_argument("--images", type=int, default=25)
    p.add_argument("--refs", type=int, default=10)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    data, sub = make_synthetic(a.out, a.styles, a.images, a.refs, a.size, a.seed)
    print(f"data: {data}\nsubmission: {sub}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
