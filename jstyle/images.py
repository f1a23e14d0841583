"""Image files <-> uint8 arrays for the methods (PIL only, no torch)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import InputError

__all__ = ["load_image", "center_square"]


def center_square(image: np.ndarray) -> np.ndarray:
    """The largest centred square crop of an [H, W, C] array."""
    h, w = image.shape[:2]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    return image[top:top + s, left:left + s]


def load_image(path: str | Path, size: int | None = None) -> np.ndarray:
    """RGB uint8 [H, W, 3]; with `size`, centre-cropped to a square and resized to size x size (Lanczos)."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: image not found")
    if size is not None and size <= 0:
        raise InputError(f"image size must be positive, got {size}")
    try:
        with Image.open(path) as im:
            image = np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError) as e:
        raise InputError(f"{path}: not a readable image ({e.__class__.__name__})")
    if size is None:
        return image
    square = Image.fromarray(center_square(image))
    return np.asarray(square.resize((size, size), Image.LANCZOS), dtype=np.uint8)
