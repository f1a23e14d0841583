"""Deterministic DDIM inversion (eta = 0) and the matching DDIM sampling loop.

`invert_along` is the one inversion loop: a list of (UNet label, level of the input latent, level it lands
on) steps, so each official convention is a list. `ddim_invert` walks the sampling schedule backwards,
evaluating the UNet at the *target* timestep label on the current latent (diffusers' DDIMInverseScheduler,
null-text inversion, StyleID's diffusers implementation); `own_label_steps` calls the UNet at the latent's
own level (StyleID's LDM code, DiffStyle's code). Sampling back regenerates the latent up to the
approximation eps(x_{t-1}, t) ~ eps(x_t, t). All use the shared DDIM math (schedulers.common); sampling
is the pipeline's one denoising loop. `pipe` needs only `.unet` and `.scheduler_config`.
"""

from __future__ import annotations

from collections.abc import Callable

import jittor as jt
import numpy as np

from ..errors import ConfigError, InputError
from ..pipeline import denoise
from ..schedulers.common import SchedulerOutput, ddim_step, predict_x0_eps
from ..schedulers.ddim import DDIMScheduler

__all__ = ["ddim_invert", "ddim_sample", "make_scheduler", "inversion_timesteps", "invert_along", "sample_along",
           "InversionStep"]

StepCallback = Callable[[int, int, jt.Var], None]  # callback(step index, timestep, latents) before the UNet
InversionStep = tuple[int, np.float32, np.float32]  # (UNet label, alpha-bar of the input latent, alpha-bar it lands on)


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
    steps = [(int(t), scheduler.alpha_prev(int(t)), scheduler.alphas_cumprod[int(t)])  # a_prev -> a_t
             for t in inversion_timesteps(scheduler, num_inversion_steps)]
    return invert_along(pipe, latents, prompt_embeds, steps, callback)


def invert_along(pipe, latents: jt.Var, prompt_embeds: jt.Var, steps: list[InversionStep],
                 callback: StepCallback | None = None) -> list[jt.Var]:
    """Eta-0 DDIM inversion (no CFG) along explicit steps (label t, a_from, a_to): the UNet at label t on the
    latent at level a_from, then x = sqrt(a_to) x0 + sqrt(1 - a_to) eps. Returns the latent after each step;
    `callback(i, t, latents)` runs before each UNet evaluation."""
    context = _context(prompt_embeds, latents.shape[0])
    kind = pipe.scheduler_config.get("prediction_type", "epsilon")
    x, out = latents, []
    with jt.no_grad():
        for i, (t, a_from, a_to) in enumerate(steps):
            if callback is not None:
                callback(i, t, x)
            x0, eps = predict_x0_eps(pipe.unet(x, t, context), x, a_from, kind)
            x = ddim_step(x0, eps, a_to)  # one eta-0 step towards more noise: a_from -> a_to
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


class _LevelsStep:
    """An eta-0 DDIM step in the scheduler interface `denoise` drives, from explicit levels: t -> (a_t, a_prev)."""

    def __init__(self, levels: dict[int, tuple[np.float32, np.float32]], prediction_type: str):
        self.levels, self.kind = levels, prediction_type

    def scale_model_input(self, sample: jt.Var, timestep: int) -> jt.Var:
        return sample

    def step(self, model_output: jt.Var, timestep: int, sample: jt.Var) -> SchedulerOutput:
        a_t, a_prev = self.levels[int(timestep)]
        x0, eps = predict_x0_eps(model_output, sample, a_t, self.kind)
        return SchedulerOutput(ddim_step(x0, eps, a_prev), x0)  # x_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev) eps


def sample_along(pipe, latents: jt.Var, prompt_embeds: jt.Var, steps: list[InversionStep],
                 callback: StepCallback | None = None) -> jt.Var:
    """Eta-0 DDIM sampling without CFG along explicit steps (label t, a_t, a_prev), in the given order: the UNet at
    label t, x0 and eps read at level a_t, then x = sqrt(a_prev) x0 + sqrt(1 - a_prev) eps. Returns the last latent."""
    levels = {int(t): (a_t, a_prev) for t, a_t, a_prev in steps}
    if len(levels) != len(steps):
        raise ConfigError("sample_along: each label once")
    sched = _LevelsStep(levels, pipe.scheduler_config.get("prediction_type", "epsilon"))
    return denoise(pipe.unet, latents, _context(prompt_embeds, latents.shape[0]), sched, [t for t, _, _ in steps],
                   callback=callback)
