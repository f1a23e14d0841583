"""Euler ancestral sampling (k-diffusion's `sample_euler_ancestral`, on Karras et al. 2022's sigma
parametrisation), following diffusers' EulerAncestralDiscreteScheduler: the sample is x = x0 + sigma eps with
sigma = sqrt((1 - abar) / abar), i.e. the VP sample divided by sqrt(abar)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jittor as jt
import numpy as np

from ..errors import ConfigError
from .common import (
    TIMESTEP_SPACINGS,
    SchedulerOutput,
    alphas_cumprod,
    as_index_array,
    check_choice,
    config_from_dict,
    f32,
    make_betas,
    per_sample,
    schedule_index,
    spaced_timesteps,
    step_noise,
)

__all__ = ["EulerAncestralDiscreteScheduler", "EulerAncestralConfig"]


@dataclass(frozen=True)
class EulerAncestralConfig:
    num_train_timesteps: int = 1000
    beta_start: float = 0.0001
    beta_end: float = 0.02
    beta_schedule: str = "linear"
    prediction_type: str = "epsilon"
    timestep_spacing: str = "linspace"
    steps_offset: int = 0


class EulerAncestralDiscreteScheduler:
    """Euler steps of the probability-flow ODE down to sigma_down, plus fresh noise of size sigma_up."""

    def __init__(self, config: EulerAncestralConfig):
        check_choice("EulerAncestral", "prediction_type", config.prediction_type, ("epsilon", "v_prediction"))
        check_choice("EulerAncestral", "timestep_spacing", config.timestep_spacing, TIMESTEP_SPACINGS)
        self.config = config
        n = config.num_train_timesteps
        betas = make_betas(config.beta_schedule, config.beta_start, config.beta_end, n)
        self.alphas_cumprod = alphas_cumprod(betas)  # abar_t = prod_s (1 - beta_s)
        self.train_sigmas = np.sqrt((f32(1) - self.alphas_cumprod) / self.alphas_cumprod)  # sigma_t
        self.sigmas = np.concatenate([self.train_sigmas[::-1], [0.0]]).astype(np.float32)
        self.timesteps = np.linspace(0, n - 1, n)[::-1].copy()
        self.num_inference_steps: int | None = None
        self.step_index: int | None = None
        self.begin_index: int | None = None

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> EulerAncestralDiscreteScheduler:
        """Build from a scheduler_config.json dict (keys of other schedulers are ignored, as in diffusers)."""
        return cls(config_from_dict(EulerAncestralConfig, config, "EulerAncestral"))

    @property
    def init_noise_sigma(self) -> float:
        """Std of the starting noise: sigma_max, or sqrt(sigma_max^2 + 1) for 'leading' spacing (as diffusers)."""
        top = self.sigmas.max()
        if self.config.timestep_spacing in ("linspace", "trailing"):
            return float(top)
        return float(np.sqrt(top * top + f32(1)))

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start stepping at this index of `timesteps` (image-to-image), instead of looking the timestep up."""
        self.begin_index = begin_index

    def set_timesteps(self, num_inference_steps: int) -> None:
        """float32 timesteps (fractional for 'linspace') and sigmas interpolated at them, ending at 0."""
        c = self.config
        t = spaced_timesteps(c.timestep_spacing, c.num_train_timesteps, num_inference_steps, c.steps_offset,
                             rounded=False).astype(np.float32)
        sigmas = np.interp(t, np.arange(len(self.train_sigmas)), self.train_sigmas)
        self.sigmas = np.concatenate([sigmas, [0.0]]).astype(np.float32)
        self.timesteps = t
        self.num_inference_steps = num_inference_steps
        self.step_index = None
        self.begin_index = None

    def _init_step_index(self, timestep: float | jt.Var) -> None:
        if self.begin_index is not None:
            self.step_index = self.begin_index
            return
        value = timestep.item() if isinstance(timestep, jt.Var) else timestep
        index = schedule_index(self.timesteps, value)
        if index is None:
            raise ConfigError(f"EulerAncestral: timestep {value} is not one of scheduler.timesteps")
        self.step_index = index

    def scale_model_input(self, sample: jt.Var, timestep: float | jt.Var) -> jt.Var:
        """The model sees x / sqrt(sigma^2 + 1), the VP-scaled input it was trained on."""
        if self.step_index is None:
            self._init_step_index(timestep)
        sigma = self.sigmas[self.step_index]
        return sample / float(np.sqrt(sigma * sigma + f32(1)))

    def step(
        self,
        model_output: jt.Var,
        timestep: float | jt.Var,
        sample: jt.Var,
        generator: np.random.Generator | None = None,
        variance_noise: jt.Var | None = None,
    ) -> SchedulerOutput:
        """x_{i+1} = x_i + d_i (sigma_down - sigma_i) + sigma_up z, d_i = (x_i - x0) / sigma_i (the Euler step of
        Karras et al. Algorithm 1, k-diffusion's ancestral split); z from `variance_noise` or `generator`
        (drawn at every step, as diffusers)."""
        if self.num_inference_steps is None:
            raise ConfigError("call set_timesteps(n) before step()")
        if self.step_index is None:
            self._init_step_index(timestep)
        dtype = model_output.dtype
        sample = sample.float32()
        sigma, sigma_to = self.sigmas[self.step_index], self.sigmas[self.step_index + 1]
        # 1. x0 from the model output at noise level sigma. Not common.vp_x0_eps: this sample is variance-exploding,
        #    x = x0 + sigma eps (the VP sample / sqrt(abar)), so the relations and their roundings differ.
        if self.config.prediction_type == "epsilon":  # x0 = x - sigma eps
            x0 = sample - float(sigma) * model_output
        else:  # v: x0 = c_out v + c_skip x, c_out = -sigma / sqrt(sigma^2 + 1), c_skip = 1 / (sigma^2 + 1)
            s2 = sigma * sigma + f32(1)
            x0 = model_output * float(-sigma / np.sqrt(s2)) + sample / float(s2)
        # 2. split the step: sigma_up^2 = sigma_to^2 (sigma^2 - sigma_to^2) / sigma^2,
        #    sigma_down^2 = sigma_to^2 - sigma_up^2
        sigma_up = np.sqrt(sigma_to * sigma_to * (sigma * sigma - sigma_to * sigma_to) / (sigma * sigma))
        sigma_down = np.sqrt(max(sigma_to * sigma_to - sigma_up * sigma_up, f32(0)))
        # 3. Euler step of dx/dsigma = (x - x0) / sigma from sigma to sigma_down
        derivative = (sample - x0) / float(sigma)
        prev = sample + derivative * float(sigma_down - sigma)
        # 4. ancestral noise
        noise = step_noise(model_output, generator, variance_noise, "EulerAncestral")
        prev = prev + noise * float(sigma_up)
        self.step_index += 1
        return SchedulerOutput(prev.cast(dtype), x0)

    def add_noise(self, original: jt.Var, noise: jt.Var, timesteps) -> jt.Var:
        """x = x0 + sigma(t) noise, sigma taken from the schedule set by set_timesteps."""
        if self.begin_index is None:
            indices = []
            for value in as_index_array(timesteps):
                index = schedule_index(self.timesteps, value)
                if index is None:
                    raise ConfigError(f"EulerAncestral: timestep {value} is not one of scheduler.timesteps")
                indices.append(index)
        else:
            indices = [self.step_index if self.step_index is not None else self.begin_index] * len(
                as_index_array(timesteps))
        return original + noise * per_sample(self.sigmas[indices], original.ndim, original.dtype)
