"""Deterministic DDIM inversion (eta = 0) and the matching DDIM sampling loop.

Inversion walks the sampling schedule backwards: from a clean latent up to the noisiest kept
timestep, evaluating the UNet at the *target* timestep label on the current latent, as diffusers'
DDIMInverseScheduler and null-text inversion do. Sampling back from the result regenerates the
latent up to the approximation eps(x_{t-1}, t) ~ eps(x_t, t). Both use the shared DDIM math
(schedulers.common); sampling is the pipeline's one denoising loop. `pipe` needs only `.unet` and
`.scheduler_config`.
"""

from __future__ import annotations

from collections.abc import Callable

import jittor as jt
import numpy as np

from ..errors import ConfigError, InputError
from ..pipeline import denoise
from ..schedulers.common import ddim_step, predict_x0_eps
from ..schedulers.ddim import DDIMScheduler

__all__ = ["ddim_invert", "ddim_sample", "make_scheduler", "inversion_timesteps"]

StepCallback = Callable[[int, int, jt.Var], None]  # callback(step index, timestep, latents) before the UNet


def make_scheduler(pipe, num_steps: int) -> DDIMScheduler:
    """A DDIM scheduler from the pipeline's scheduler config, with `num_steps` timesteps set."""
    if num_steps < 1:
        raise ConfigError(f"DDIM inversion needs at least 1 step, got {num_steps}")
    scheduler = DDIMScheduler.from_config(pipe.scheduler_config)
    scheduler.set_timesteps(num_steps)
    return scheduler


def inversion_timesteps(scheduler: DDIMScheduler, num_inversion_steps: int | None = None) -> np.ndarray:
    """Ascending timestep labels of the inversion: the last `num_inversion_steps` of the sampling schedule."""
    n = len(scheduler.timesteps) if num_inversion_steps is None else num_inversion_steps
    if not 1 <= n <= len(scheduler.timesteps):
        raise ConfigError(f"num_inversion_steps must be in 1..{len(scheduler.timesteps)}, got {n}")
    return scheduler.timesteps[::-1][:n].copy()


def _context(prompt_embeds: jt.Var, batch: int) -> jt.Var:
    if prompt_embeds.shape[0] == batch:
        return prompt_embeds
    if prompt_embeds.shape[0] != 1:
        raise InputError(f"prompt_embeds has batch {prompt_embeds.shape[0]} for {batch} latents; pass 1 or {batch}")
    return jt.concat([prompt_embeds] * batch) if batch > 1 else prompt_embeds


def ddim_invert(
    pipe,
    latents: jt.Var,
    prompt_embeds: jt.Var,
    num_steps: int,
    callback: StepCallback | None = None,
    num_inversion_steps: int | None = None,
) -> list[jt.Var]:
    """DDIM-invert clean latents [B, C, h, w] along the `num_steps` DDIM schedule (no CFG).

    Returns the latents after each step, least noisy first: entry i is the latent at timestep
    `inversion_timesteps(...)[i]`; the last entry is the start of `ddim_sample`. Only the first
    `num_inversion_steps` steps (default all) are taken. `callback(i, t, latents)` runs before each
    UNet evaluation (processors that record features use it to learn the timestep).
    """
    scheduler = make_scheduler(pipe, num_steps)
    context = _context(prompt_embeds, latents.shape[0])
    kind = scheduler.config.prediction_type
    x, out = latents, []
    with jt.no_grad():
        for i, t in enumerate(inversion_timesteps(scheduler, num_inversion_steps)):
            t = int(t)
            alpha = scheduler.alpha_prev(t)  # the level the current latent is at (final alpha for the clean one)
            if callback is not None:
                callback(i, t, x)
            x0, eps = predict_x0_eps(pipe.unet(x, t, context), x, alpha, kind)
            x = ddim_step(x0, eps, scheduler.alphas_cumprod[t])  # one eta-0 step towards more noise: a_prev -> a_t
            x.sync()
            out.append(x)
    return out


def ddim_sample(
    pipe,
    latents: jt.Var,
    prompt_embeds: jt.Var,
    num_steps: int,
    num_denoise_steps: int | None = None,
    callback: StepCallback | None = None,
) -> jt.Var:
    """Eta-0 DDIM sampling without CFG over the last `num_denoise_steps` (default all) of the schedule.

    `latents` are at timestep `scheduler.timesteps[num_steps - num_denoise_steps]`, e.g. the last entry of
    `ddim_invert(..., num_inversion_steps=num_denoise_steps)`. `callback(i, t, latents)` runs before each
    UNet evaluation. Returns the clean latents.
    """
    scheduler = make_scheduler(pipe, num_steps)
    timesteps = inversion_timesteps(scheduler, num_denoise_steps)[::-1]
    return denoise(pipe.unet, latents, _context(prompt_embeds, latents.shape[0]), scheduler, timesteps,
                   callback=callback)
