"""Image decoding (any mode -> RGB uint8) and the shared PIL preprocessing steps.

Decoding matches what the original got from ``Image.open(p).convert("RGB")`` and
``cv2.imread(p)`` (identical for 8-bit PNG/JPEG). Conversions for the inputs that crashed or
silently broke the original:

- RGBA / LA / PA: alpha dropped (what both ``convert("RGB")`` and ``cv2.imread`` do);
- grayscale / palette / CMYK: converted by PIL (CMYK JPEG may differ from OpenCV by 1 level);
- 16-bit: high byte kept (``v >> 8``, as ``cv2.imread`` does; PIL alone would clip to white);
- float images: [0, 1] scaled to [0, 255], clipped.

EXIF orientation is ignored (the original's PIL path ignored it).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = [
    "IMAGE_SUFFIXES",
    "ImageDecodeError",
    "decode_rgb",
    "resize_shortest_center_crop",
    "normalize_chw",
    "to_unit_chw",
]

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"})
Image.MAX_IMAGE_PIXELS = 16384 * 16384  # larger files are rejected as unreadable, not decompression bombs


class ImageDecodeError(Exception):
    """An image file that cannot be decoded; the message says why."""


def _pil_to_rgb(im: Image.Image) -> np.ndarray:
    mode = im.mode
    if mode == "RGB":
        return np.asarray(im, dtype=np.uint8)
    if mode.startswith("I;16") or mode == "I":
        arr = np.asarray(im).astype(np.int64)
        if mode == "I" and arr.max(initial=0) <= 255:
            gray = np.clip(arr, 0, 255)
        else:
            gray = np.clip(arr, 0, 65535) >> 8  # 16-bit -> 8-bit: high byte, like cv2.imread
        return np.repeat(gray.astype(np.uint8)[..., None], 3, axis=2)
    if mode == "F":
        arr = np.asarray(im, dtype=np.float64)
        if arr.max(initial=0.0) <= 1.0:
            arr = arr * 255.0
        gray = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    return np.asarray(im.convert("RGB"), dtype=np.uint8)


def decode_rgb(path: Path) -> np.ndarray:
    """Decode ``path`` into an RGB uint8 array of shape (H, W, 3).

    Raises ImageDecodeError with a short reason when the file is not a readable image.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as im:
                im.load()
                arr = _pil_to_rgb(im)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ImageDecodeError(f"not a readable image ({type(exc).__name__}: {exc})") from None
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ImageDecodeError(f"unexpected decoded shape {arr.shape}")
    return np.ascontiguousarray(arr)


def resize_shortest_center_crop(rgb: np.ndarray, shortest: int, crop: int) -> np.ndarray:
    """Bicubic-resize the shorter edge to ``shortest`` (PIL), then centre-crop ``crop`` x ``crop``.

    Same arithmetic as the transformers PIL image processors (DINOv2's BitImageProcessor,
    CLIPImageProcessor): long = int(shortest * long / short), top = (H - crop) // 2.
    """
    if crop > shortest:
        raise ValueError("crop must not exceed shortest")
    h, w = rgb.shape[:2]
    if w <= h:
        new_w, new_h = shortest, int(shortest * h / w)
    else:
        new_w, new_h = int(shortest * w / h), shortest
    out = np.asarray(Image.fromarray(rgb).resize((new_w, new_h), Image.BICUBIC))
    top, left = (new_h - crop) // 2, (new_w - crop) // 2
    return out[top : top + crop, left : left + crop]


def normalize_chw(rgb: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """x = (rgb / 255 - mean) / std as float32 (C, H, W), the transformers rescale+normalize."""
    x = (rgb.astype(np.float64) * (1 / 255)).astype(np.float32)
    x = (x - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def to_unit_chw(rgb: np.ndarray) -> np.ndarray:
    """torchvision ToTensor(): uint8 (H, W, 3) -> float32 (3, H, W) in [0, 1] (x / 255 in float32)."""
    return np.ascontiguousarray(rgb.transpose(2, 0, 1)).astype(np.float32) / np.float32(255)
