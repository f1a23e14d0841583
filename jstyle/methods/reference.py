"""Which of a style's reference images a training-free method (StyleID, DiffStyle) uses for one content image."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data import image_key
from ..errors import InputError
from ..io import read_rgb

__all__ = ["RULES", "colour_signature", "random_index", "choose_reference", "choose_references", "parse_count",
           "parse_size", "read_reference"]

RULES = ("first", "nearest", "random")


def colour_signature(image: np.ndarray) -> np.ndarray:
    """Per-channel mean and std of a 32x32 thumbnail, in [0, 1]: a cheap global colour descriptor."""
    from PIL import Image

    thumb = np.asarray(Image.fromarray(np.asarray(image, np.uint8)).resize((32, 32), Image.BILINEAR), np.float64)
    thumb = thumb.reshape(-1, 3) / 255.0
    return np.concatenate([thumb.mean(0), thumb.std(0)])


def random_index(n: int, seed: int, style: str, prompt: str) -> int:
    """The 'random' rule's index into n sorted references: one fresh generator per (seed, style, prompt), so the
    draw does not depend on task order or worker (tests/reference/jstyleid_ref.py::pick_reference)."""
    # index = default_rng([seed, crc32(style), crc32(prompt)]).integers(0, n), crc32 of the UTF-8 bytes
    return int(np.random.default_rng(image_key(seed, style, prompt)).integers(0, n))


def parse_count(value: str | int | None) -> int | None:
    """--references: a count k >= 1, or 'all' (None)."""
    if value is None or str(value).strip().lower() == "all":
        return None
    try:
        k = int(str(value).strip())
    except ValueError:
        k = 0
    if k < 1:
        raise InputError(f"--references {value!r}: use a count >= 1 or all")
    return k


def choose_references(content: np.ndarray | None, references: list[Path], rule: str = "first", k: int | None = 1,
                      *, seed: int = 0, style: str = "", prompt: str = "") -> list[Path]:
    """k references (None: all of them), the one `choose_reference` picks first; then, by rule, the next in sorted
    order ('first'), the next closest in colour ('nearest'), or a seeded permutation of the rest ('random')."""
    first = choose_reference(content, references, rule, seed=seed, style=style, prompt=prompt)
    refs = sorted(Path(p) for p in references)
    k = len(refs) if k is None else min(k, len(refs))
    if k == 1:
        return [first]
    rest = [p for p in refs if p != first]
    if rule == "nearest":
        target = colour_signature(content)
        rest.sort(key=lambda p: float(np.linalg.norm(colour_signature(read_rgb(p)) - target)))
    elif rule == "random":  # the same generator's next draw after the first reference's index
        rng = np.random.default_rng(image_key(seed, style, prompt))
        rng.integers(0, len(refs))
        rest = [rest[i] for i in rng.permutation(len(rest))]
    return [first, *rest[:k - 1]]


def choose_reference(content: np.ndarray | None, references: list[Path], rule: str = "first", *, seed: int = 0,
                     style: str = "", prompt: str = "") -> Path:
    """'first': the first reference in sorted order (deterministic, same for every prompt);
    'nearest': the one whose colour signature is closest (L2) to the content image's, ties to the first;
    'random': a seeded draw per (seed, style, prompt), as the JStyleID seed drew one reference per prompt
    (`random_index`; `prompt` is the object word as in prompt.json, `style` the style folder's name)."""
    if not references:
        raise InputError("no reference images to choose from")
    if rule not in RULES:
        raise InputError(f"unknown reference rule '{rule}'; use one of {', '.join(RULES)}")
    refs = sorted(Path(p) for p in references)
    if rule == "first":
        return refs[0]
    if rule == "random":
        return refs[random_index(len(refs), seed, style, prompt)]
    if content is None:
        raise InputError("reference rule 'nearest' needs a content image; use first or random")
    target = colour_signature(content)
    dists = [float(np.linalg.norm(colour_signature(read_rgb(p)) - target)) for p in refs]
    return refs[int(np.argmin(dists))]


def parse_size(value: str | int | None, auto: int | None) -> int | None:
    """--reference-size: 'native' (None: the file's own size), a size N in pixels, or 'auto' (the method's source
    reading, `auto`)."""
    text = str(value).strip().lower() if value is not None else "auto"
    if text == "auto":
        return auto
    if text == "native":
        return None
    if not text.isdigit() or int(text) <= 0 or int(text) % 8:
        raise InputError(f"--reference-size {value!r}: use native, auto or a positive multiple of 8")
    return int(text)


def read_reference(path: str | Path, size: int | None) -> np.ndarray:
    """A reference image as a method reads it: centre square resized to size x size (jstyle.io.read_rgb), or with
    size None at its own size, no crop, as StyleID's diffusers code reads it (cv2.imread(path)[:, :, ::-1],
    run_styleid_diffusers.py); the one change: sides are trimmed at the bottom / right to a multiple of 8 (the
    VAE's stride; the official code has no such step and fails on such sizes)."""
    image = read_rgb(path, size)
    if size is None:
        image = image[:image.shape[0] // 8 * 8, :image.shape[1] // 8 * 8]
        if image.size == 0:
            raise InputError(f"{path}: smaller than 8x8 pixels; use a larger reference image")
    return image
