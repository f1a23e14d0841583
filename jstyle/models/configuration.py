"""Building a model from a diffusers config.json dict, shared by the diffusers-layout models."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

__all__ = ["from_diffusers_config"]


def from_diffusers_config(cls: type[T], config: dict[str, Any], check: Callable[[dict[str, Any]], None]) -> T:
    """`check` the dict (ignoring '_'-prefixed bookkeeping keys), build `cls` from the keys its
    __init__ takes, and keep the whole dict (defaults included) as `model.config`."""
    cfg = {k: v for k, v in config.items() if not k.startswith("_")}
    check(cfg)
    names = set(inspect.signature(cls.__init__).parameters) - {"self"}
    model = cls(**{k: v for k, v in cfg.items() if k in names})
    model.config = {**model.config, **cfg}
    return model
