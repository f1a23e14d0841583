"""Files in and out: one image reader, one PNG writer, one atomic writer (PIL and numpy only, no Jittor).

Every image jstyle reads goes through `read_rgb`, so a reference is the same array for training, StyleID,
SDEdit and DiffStyle. Alpha rule: transparent pixels are composited on white (a transparent background is
white paper, not black ink). 16/32-bit grayscale is scaled to 8 bit; CMYK, L, LA and palettes become RGB.

Every file jstyle writes goes through `atomic_path`: the data lands under a temp name in the final
folder, then `os.replace` gives it the final name, so a crash or a kill never leaves a truncated file
under the final name. Temp names have one shape, `.<final name>.<pid>-<8 hex>.jstyle-tmp`, and `is_temp`
matches exactly that shape, so cleaning up after a kill never guesses.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .errors import InputError

__all__ = ["FITS", "read_rgb", "save_png", "atomic_path", "atomic_write", "temp_path", "is_temp", "temp_writer"]

TEMP_SUFFIX = ".jstyle-tmp"
_TEMP_NAME = re.compile(r"^\..+\.([0-9]+)-[0-9a-f]{8}" + re.escape(TEMP_SUFFIX) + "$")
# how `size` is reached: "crop" = centre square crop, then a Lanczos resize; "squash" = the whole image
# resized to size x size with PIL's bilinear filter, as jittor.transform.Resize(size) with an int does
FITS = ("crop", "squash")


def temp_path(final: str | Path) -> Path:
    """A fresh temp path beside `final` (same folder, so `os.replace` is atomic)."""
    final = Path(final)
    return final.with_name(f".{final.name}.{os.getpid()}-{secrets.token_hex(4)}{TEMP_SUFFIX}")


def is_temp(path: str | Path) -> bool:
    """True for the temp names `temp_path` makes, and nothing else."""
    return bool(_TEMP_NAME.match(Path(path).name))


def temp_writer(path: str | Path) -> int | None:
    """The pid of the process that made temp name `path` (None for a name `temp_path` did not make)."""
    m = _TEMP_NAME.match(Path(path).name)
    return int(m.group(1)) if m else None


@contextmanager
def atomic_path(final: str | Path, directory: bool = False) -> Iterator[Path]:
    """Yield a temp path to write (a file, or a created folder with `directory=True`); on success it
    replaces `final` (an existing folder is removed first), on error it is deleted and `final` is untouched."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(final)
    if directory:
        tmp.mkdir()
    try:
        yield tmp
        if directory and final.is_dir() and not final.is_symlink():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists() or tmp.is_symlink():
            tmp.unlink()


def atomic_write(path: str | Path, data: str | bytes, encoding: str = "utf-8") -> None:
    """Write text or bytes to `path` atomically."""
    with atomic_path(path) as tmp:
        if isinstance(data, str):
            tmp.write_text(data, encoding=encoding)
        else:
            tmp.write_bytes(data)


def save_png(image: np.ndarray, path: str | Path, info: dict[str, str] | None = None) -> None:
    """Write a uint8 [H, W, 3] (or [H, W]) image as PNG atomically, with optional PNG text fields."""
    from PIL import Image, PngImagePlugin

    meta = PngImagePlugin.PngInfo()
    for key, value in (info or {}).items():
        meta.add_text(key, value)
    with atomic_path(path) as tmp:
        Image.fromarray(np.asarray(image, np.uint8)).save(tmp, format="PNG", pnginfo=meta)


def read_rgb(path: str | Path, size: int | None = None, fit: str = "crop") -> np.ndarray:
    """An image file as RGB uint8 [H, W, 3], alpha composited on white.

    With `size` and fit="crop": the centred largest square is cropped, then resized to size x size
    (Lanczos, as diffusers' VaeImageProcessor). fit="squash": the whole image is resized to size x size
    (bilinear, aspect not kept), as the JDiffusion baseline's `jittor.transform.Resize(size)`.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: image not found")
    if size is not None and size <= 0:
        raise InputError(f"image size must be positive, got {size}")
    if fit not in FITS:
        raise InputError(f"unknown fit '{fit}'; use one of {', '.join(FITS)}")
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16/32-bit grayscale: scale to 8 bit first
                a = np.asarray(im, dtype=np.float64)
                peak = 65535.0 if im.mode.startswith("I;16") or a.max() > 255 else 255.0
                im = Image.fromarray(np.clip(a / peak * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
            if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                rgba = im.convert("RGBA")
                white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))  # out = a * rgb + (1 - a) * white
                im = Image.alpha_composite(white, rgba)
            rgb = im.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise InputError(f"{path}: not a readable image ({type(e).__name__}); replace or remove it") from None
    if size is None:
        return np.asarray(rgb, dtype=np.uint8)
    w, h = rgb.size
    if fit == "squash":  # jittor.transform.resize: img.resize((w, h), Image.BILINEAR), even when same size
        return np.asarray(rgb.resize((size, size), Image.BILINEAR), dtype=np.uint8)
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    square = rgb.crop((left, top, left + s, top + s))
    if s != size:
        square = square.resize((size, size), Image.LANCZOS)
    return np.asarray(square, dtype=np.uint8)
