"""Make the small demo dataset (committed under demo/data/):

    python scripts/make_demo_data.py [OUT_DIR]      (default: demo/data)

Three styles in the challenge layout (<style>/images/<Shape>.png + <style>/prompt.json), drawn by
scripts/demo_shapes.py at the demo model's 64 px: shapes in a texture and palette the demo model
(demo/model) never saw in training, so that LoRA training and style injection have real work to do.
00: lime/pink zigzags on purple, 01: sepia grid, 02: neon blobs on black. Each style shows three
shapes; its prompts ask for the other two. Deterministic: the same bytes every run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from demo_shapes import STYLE_PALETTES, STYLE_TEXTURES, render  # noqa: E402

# style -> (texture, palette index, reference shapes, prompted shapes)
STYLES = {
    "00": ("zigzag", 0, ("circle", "house", "star"), ("Square", "Triangle")),
    "01": ("grid", 1, ("square", "triangle", "star"), ("Circle", "House")),
    "02": ("blobs", 2, ("circle", "square", "house"), ("Star", "Triangle")),
}


def make(out: Path) -> None:
    for style, (texture, palette, shapes, prompts) in STYLES.items():
        rng = np.random.default_rng(int(style))
        images = out / style / "images"
        images.mkdir(parents=True, exist_ok=True)
        for old in images.glob("*.png"):
            old.unlink()
        for shape in shapes:
            pixels = render(shape, STYLE_TEXTURES[texture], STYLE_PALETTES[palette], rng)
            Image.fromarray(pixels).save(images / f"{shape.capitalize()}.png", optimize=True)
        (out / style / "prompt.json").write_text(json.dumps(dict(enumerate(prompts)), indent=1) + "\n")


if __name__ == "__main__":
    make(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / "demo" / "data")
