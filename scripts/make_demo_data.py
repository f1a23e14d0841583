"""Make the small procedural demo dataset (committed under demo/data/):

    python scripts/make_demo_data.py [OUT_DIR]      (default: demo/data)

Three styles of four 128x128 reference images each, in the challenge layout
(<style>/images/*.png + <style>/prompt.json), drawn from seeded numpy patterns: warm stripes,
cool rings and a mosaic. Deterministic: the same bytes every run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

SIZE = 128
PROMPTS = {
    "00": ["Dolphin", "Bread", "Lion"],
    "01": ["House", "Tree", "Boat", "Cat"],
    "02": ["Flower", "Car", "Bird"],
}


def stripes(rng: np.random.Generator) -> np.ndarray:
    y, x = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    angle = rng.uniform(0, np.pi)
    wave = np.sin((x * np.cos(angle) + y * np.sin(angle)) * rng.uniform(8, 20))[..., None]
    warm, dark = np.array([240, 150, 60]), np.array([120, 30, 40])
    return warm * (wave > 0) + dark * (wave <= 0)


def rings(rng: np.random.Generator) -> np.ndarray:
    y, x = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    cx, cy = rng.uniform(0.2, 0.8, 2)
    r = np.hypot(x - cx, y - cy)[..., None]
    blue, teal = np.array([40, 70, 200]), np.array([90, 220, 200])
    t = (np.sin(r * rng.uniform(25, 45)) + 1) / 2
    return blue * t + teal * (1 - t)


def mosaic(rng: np.random.Generator) -> np.ndarray:
    tiles = rng.integers(0, 4, size=(8, 8))
    palette = np.array([[30, 30, 30], [220, 200, 40], [200, 40, 90], [240, 240, 230]])
    return np.kron(palette[tiles], np.ones((SIZE // 8, SIZE // 8, 1)))


PATTERNS = {"00": stripes, "01": rings, "02": mosaic}


def make(out: Path) -> None:
    for style, draw in PATTERNS.items():
        rng = np.random.default_rng(int(style))
        images = out / style / "images"
        images.mkdir(parents=True, exist_ok=True)
        for i in range(4):
            pixels = draw(rng) + rng.normal(0, 6, (SIZE, SIZE, 3))
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(images / f"{i:02d}.png", optimize=True)
        prompts = {str(i): p for i, p in enumerate(PROMPTS[style])}
        (out / style / "prompt.json").write_text(json.dumps(prompts, indent=1) + "\n")


if __name__ == "__main__":
    make(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / "demo" / "data")
