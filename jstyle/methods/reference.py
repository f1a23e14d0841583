"""Which of a style's reference images a training-free method (StyleID, DiffStyle) uses for one content image."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data import image_key
from ..errors import InputError
from ..io import read_rgb

__all__ = ["RULES", "colour_signature", "random_index", "choose_reference"]

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
