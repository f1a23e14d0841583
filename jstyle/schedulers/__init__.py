"""Noise schedulers, one algorithm per file, built from a diffusers scheduler_config.json dict."""

from .ddim import DDIMScheduler, SchedulerOutput, make_betas

__all__ = ["DDIMScheduler", "SchedulerOutput", "make_betas"]
