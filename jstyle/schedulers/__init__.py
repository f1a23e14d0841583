"""Noise schedulers, one algorithm per file, built from a diffusers scheduler_config.json dict.

`get_scheduler(name, config)` picks one by its short name (`SCHEDULERS`): the same scheduler_config.json
serves them all, as diffusers' `from_config` does (keys meant for another scheduler are ignored).
"""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError
from .common import SchedulerOutput, make_betas
from .ddim import DDIMScheduler
from .ddpm import DDPMScheduler
from .dpm_solver import DPMSolverMultistepScheduler
from .euler_ancestral import EulerAncestralDiscreteScheduler

__all__ = [
    "DDIMScheduler", "DDPMScheduler", "DPMSolverMultistepScheduler", "EulerAncestralDiscreteScheduler",
    "SCHEDULERS", "SchedulerOutput", "get_scheduler", "make_betas",
]

SCHEDULERS: dict[str, type] = {
    "ddim": DDIMScheduler,
    "ddpm": DDPMScheduler,
    "dpm++2m": DPMSolverMultistepScheduler,
    "euler_a": EulerAncestralDiscreteScheduler,
}


def get_scheduler(name: str, config: dict[str, Any]):
    """A fresh scheduler `name` (see SCHEDULERS) built from a scheduler_config.json dict."""
    if name not in SCHEDULERS:
        raise ConfigError(f"unknown scheduler '{name}'; use one of {', '.join(SCHEDULERS)}")
    return SCHEDULERS[name].from_config(config)
