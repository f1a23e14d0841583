"""jstyle checker: the challenge's six metrics and final score, in pure PyTorch.

Import is cheap and side-effect free: no model is loaded and neither torch nor jittor is imported
here. Entry points: ``python -m checker`` (see ``checker.cli``) and ``checker.run.evaluate``.
"""

__version__ = "1.0.0"
__all__ = ["__version__"]
