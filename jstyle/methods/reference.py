"""Which of a style's reference images a training-free method (StyleID, DiffStyle) uses for one content image."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InputError
from ..io import read_rgb

__all__ = ["RULES", "colour_signature", "choose_reference"]

RULES = ("first", "nearest")


def colour_signature(image: np.ndarray) -> np.ndarray:
    """Per-channel mean and std of a 32x32 thumbnail, in [0, 1]: a cheap global colour descriptor."""
    from PIL import Image

    thumb = np.asarray(Image.fromarray(np.asarray(image, np.uint8)).resize((32, 32), Image.BILINEAR), np.float64)
    thumb = thumb.reshape(-1, 3) / 255.0
    return np.concatenate([thumb.mean(0), thumb.std(0)])


def choose_reference(content: np.ndarray, references: list[Path], rule: str = "first") -> Path:
    """'first': the first reference in sorted order (deterministic, same for every prompt);
    'nearest': the one whose colour signature is closest (L2) to the content image's, ties to the first."""
    if not references:
        raise InputError("no reference images to choose from")
    if rule not in RULES:
        raise InputError(f"unknown reference rule '{rule}'; use one of {', '.join(RULES)}")
    refs = sorted(Path(p) for p in references)
    if rule == "first":
        return refs[0]
    target = colour_signature(content)
    dists = [float(np.linalg.norm(colour_signature(read_rgb(p)) - target)) for p in refs]
    return refs[int(np.argmin(dists))]
