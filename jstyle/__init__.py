"""jstyle: diffusion style transfer in Jittor (Stable Diffusion 1.x/2.x parts that load diffusers folders).

`import jstyle` is cheap and has no side effects; Jittor is imported when a model part is first used.
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["load_pipeline", "StableDiffusion", "write_tiny_pipeline", "__version__"]

_LAZY = {
    "load_pipeline": "jstyle.pipeline",
    "StableDiffusion": "jstyle.pipeline",
    "write_tiny_pipeline": "jstyle.tiny",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'jstyle' has no attribute {name!r}")
