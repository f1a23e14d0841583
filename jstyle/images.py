"""Image files <-> uint8 arrays for the methods (PIL only, no torch)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .errors import InputError

__all__ = ["load_image", "center_square", "save_png"]


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


def save_png(image: np.ndarray, path: str | Path, info: dict[str, str] | None = None) -> None:
    """Write a uint8 [H, W, 3] image atomically (temp file in the same folder, then os.replace), with
    optional PNG text fields; a crash never leaves a truncated PNG under the final name."""
    from PIL import Image, PngImagePlugin

    path = Path(path)
    meta = PngImagePlugin.PngInfo()
    for key, value in (info or {}).items():
        meta.add_text(key, value)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        Image.fromarray(image).save(tmp, format="PNG", pnginfo=meta)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
