"""The old names of `jstyle.io`'s reader and writer, kept only while jstyle/jobs/stages.py imports them.

Use `jstyle.io.read_rgb` and `jstyle.io.save_png`; this module goes once stages.py imports jstyle.io.
"""

from __future__ import annotations

from .io import read_rgb as load_image
from .io import save_png

__all__ = ["load_image", "save_png"]
