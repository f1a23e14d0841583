"""DDPM ancestral sampling (Ho et al. 2020), following diffusers' DDPMScheduler."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jittor as jt
import numpy as np

from ..errors import ConfigError
from .common import (
    PREDICTION_TYPES,
    TIMESTEP_SPACINGS,
    SchedulerOutput,
    alphas_cumprod,
    check_choice,
    config_from_dict,
    f32,
    make_betas,
    predict_x0_eps,
    spaced_timesteps,
    step_noise,
    threshold_sample,
    vp_add_noise,
    vp_velocity,
)

__all__ = ["DDPMScheduler", "DDPMConfig"]

VARIANCE_TYPES = ("fixed_small", "fixed_small_log", "fixed_large")


@dataclass(frozen=True)
class DDPMConfig:
    num_train_timesteps: int = 1000
    beta_start: float = 0.0001
    beta_end: float = 0.02
    beta_schedule: str = "linear"
    variance_type: str = "fixed_small"
    clip_sample: bool = True
    clip_sample_range: float = 1.0
    prediction_type: str = "epsilon"
    timestep_spacing: str = "leading"
    steps_offset: int = 0
    thresholding: bool = False
    dynamic_thresholding_ratio: float = 0.995
    sample_max_value: float = 1.0


class DDPMScheduler:
    """Stochastic reverse process p(x_{t-1} | x_t) = N(mu(x_t, x0), sigma_t^2) over the chosen timesteps."""

    def __init__(self, config: DDPMConfig):
        check_choice("DDPM", "prediction_type", config.prediction_type, PREDICTION_TYPES)
        check_choice("DDPM", "timestep_spacing", config.timestep_spacing, TIMESTEP_SPACINGS)
        check_choice("DDPM", "variance_type", config.variance_type, VARIANCE_TYPES)
        self.config = config
        n = config.num_train_timesteps
        betas = make_betas(config.beta_schedule, config.beta_start, config.beta_end, n)
        self.alphas_cumprod = alphas_cumprod(betas)  # abar_t = prod_s (1 - beta_s)
        self.init_noise_sigma = 1.0
        self.num_inference_steps: int | None = None
        self.timesteps = np.arange(n)[::-1].astype(np.int64)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> DDPMScheduler:
        """Build from a scheduler_config.json dict (keys of other schedulers are ignored, as in diffusers)."""
        return cls(config_from_dict(DDPMConfig, config, "DDPM"))

    def set_timesteps(self, num_inference_steps: int) -> None:
        """Choose the sampling timesteps (diffusers' 'leading' / 'trailing' / 'linspace' spacing)."""
        c = self.config
        t = spaced_timesteps(c.timestep_spacing, c.num_train_timesteps, num_inference_steps, c.steps_offset)
        self.timesteps = t.astype(np.int64)
        self.num_inference_steps = num_inference_steps

    def previous_timestep(self, timestep: int) -> int:
        """The next timestep of the schedule (-1 after the last); t - 1 before set_timesteps."""
        if self.num_inference_steps is None:
            return timestep - 1
        index = np.nonzero(self.timesteps == timestep)[0]
        if len(index) == 0:
            raise ConfigError(f"DDPM: timestep {timestep} is not in the schedule set by set_timesteps")
        i = int(index[0])
        return int(self.timesteps[i + 1]) if i + 1 < len(self.timesteps) else -1

    def scale_model_input(self, sample: jt.Var, timestep: int | None = None) -> jt.Var:
        return sample

    def step(
        self,
        model_output: jt.Var,
        timestep: int,
        sample: jt.Var,
        generator: np.random.Generator | None = None,
        variance_noise: jt.Var | None = None,
    ) -> SchedulerOutput:
        """x_{t-1} = mu_t(x_t, x0) + sigma_t z  (DDPM eq. 6-7); z from `variance_noise` or `generator`, none at t=0."""
        t = int(timestep)
        prev_t = self.previous_timestep(t)
        one = f32(1)
        # 1. alphas, betas (float32, in diffusers' order)
        a = self.alphas_cumprod[t]
        a_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else one
        beta_prod, beta_prod_prev = one - a, one - a_prev
        alpha_t = a / a_prev
        beta_t = one - alpha_t
        # 2. predicted x0 (eq. 15): x0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t), or from v / x0
        x0 = predict_x0_eps(model_output, sample, a, self.config.prediction_type)[0]
        # 3. clip or threshold x0
        if self.config.thresholding:
            x0 = threshold_sample(x0, self.config.dynamic_thresholding_ratio, self.config.sample_max_value)
        elif self.config.clip_sample:
            r = self.config.clip_sample_range
            x0 = x0.clamp(-r, r)
        # 4.-5. posterior mean (eq. 7): mu = sqrt(abar_{t-1}) beta_t / (1 - abar_t) x0
        #                                    + sqrt(alpha_t) (1 - abar_{t-1}) / (1 - abar_t) x_t
        x0_coeff = np.sqrt(a_prev) * beta_t / beta_prod
        xt_coeff = np.sqrt(alpha_t) * beta_prod_prev / beta_prod
        prev = float(x0_coeff) * x0 + float(xt_coeff) * sample
        # 6. noise with the fixed variance: beta~_t = (1 - abar_{t-1}) / (1 - abar_t) beta_t (eq. 7), or beta_t
        if t > 0:
            noise = step_noise(model_output, generator, variance_noise, "DDPM")
            prev = prev + float(self._std(a, a_prev, beta_t)) * noise
        return SchedulerOutput(prev, x0)

    def _std(self, a: np.float32, a_prev: np.float32, beta_t: np.float32) -> np.float32:
        one = f32(1)
        variance = max((one - a_prev) / (one - a) * beta_t, f32(1e-20))  # beta~_t, clamped to keep log finite
        kind = self.config.variance_type
        if kind == "fixed_small":
            return np.sqrt(variance)
        if kind == "fixed_small_log":
            return np.exp(f32(0.5) * np.log(variance))
        return np.sqrt(beta_t)  # fixed_large: sigma_t^2 = beta_t

    def add_noise(self, original: jt.Var, noise: jt.Var, timesteps) -> jt.Var:
        """q(x_t | x_0): sqrt(abar_t) x_0 + sqrt(1 - abar_t) noise."""
        return vp_add_noise(self.alphas_cumprod, original, noise, timesteps)

    def get_velocity(self, sample: jt.Var, noise: jt.Var, timesteps) -> jt.Var:
        """v = sqrt(abar_t) noise - sqrt(1 - abar_t) x_0 (the v-prediction target)."""
        return vp_velocity(self.alphas_cumprod, sample, noise, timesteps)
