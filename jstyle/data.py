"""The challenge dataset layout: <data>/<style>/images/*.{png,jpg} and <data>/<style>/prompt.json."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

from .errors import InputError

__all__ = ["IMAGE_SUFFIXES", "list_styles", "read_prompts", "list_images", "image_key", "NOISE_STREAM"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
NOISE_STREAM = 1  # image_key's stream of an image's noise (the 'random' reference rule draws from no stream)


def list_styles(data: Path, wanted: list[str] | None = None) -> list[str]:
    """Style folder names (sorted); `wanted` restricts them and must all exist."""
    data = Path(data)
    if not data.is_dir():
        raise InputError(f"{data}: dataset folder not found")
    styles = sorted(p.name for p in data.iterdir() if p.is_dir() and (p / "prompt.json").exists())
    if not styles:
        raise InputError(f"{data}: no style folders with a prompt.json inside")
    if wanted:
        missing = [s for s in wanted if s not in styles]
        if missing:
            raise InputError(f"{data}: no style folder {missing[0]} (have {', '.join(styles)})")
        return [s for s in styles if s in wanted]
    return styles


def read_prompts(style_dir: Path) -> list[str]:
    """Object words of a style's prompt.json ({"0": "Dolphin", ...}), in key order."""
    path = Path(style_dir) / "prompt.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: unreadable ({e}); it must be a JSON object like {{\"0\": \"Dolphin\"}}")
    if not isinstance(data, dict) or not all(isinstance(v, str) and v.strip() for v in data.values()):
        raise InputError(f"{path}: must be a JSON object of non-empty strings, like {{\"0\": \"Dolphin\"}}")
    bad = [v for v in data.values() if "/" in v or "\\" in v or v in (".", "..")]
    if bad:
        raise InputError(f"{path}: prompt {bad[0]!r} cannot be a file name; remove path separators")
    keys = sorted(data, key=lambda k: (not k.isdigit(), int(k) if k.isdigit() else 0, k))
    return [data[k] for k in keys]


def list_images(style_dir: Path) -> list[Path]:
    """Reference images of a style (sorted; other files ignored)."""
    folder = Path(style_dir) / "images"
    if not folder.is_dir():
        raise InputError(f"{folder}: missing; put the style's reference images there")
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


def image_key(seed: int, style: str, obj: str, *stream: int) -> tuple[int, ...]:
    """A stable seed for numpy.random.default_rng per (run seed, style folder, object word as in prompt.json),
    the same in every process and on every machine (Python's hash() is not); `stream` tells apart the draws
    of one image (the reference rule's: none, the image's noise: NOISE_STREAM)."""
    # key = [seed, crc32(style), crc32(obj), *stream], crc32 of the UTF-8 bytes
    return (seed, zlib.crc32(style.encode("utf-8")), zlib.crc32(obj.encode("utf-8")), *stream)
