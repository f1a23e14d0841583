"""A toy method for test_registry: one file with a settings dataclass and an inject function, as a real one."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class ToyConfig:
    level: int = field(default=255, metadata={"help": "the toy's negative: level - content"})


def inject(pipe, job) -> tuple[np.ndarray, dict]:
    """The content's negative (no model work)."""
    image = np.clip(job.settings.level - job.content.astype(np.int32), 0, 255).astype(np.uint8)
    return image, {"level": job.settings.level, "references": len(job.references)}
