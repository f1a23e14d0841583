"""DDIM (Song et al. 2020), following diffusers' DDIMScheduler: set_timesteps / step / add_noise."""

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
    config_from_dict,
    ddim_sigma,
    ddim_step,
    make_betas,
    predict_x0_eps,
    spaced_timesteps,
    step_noise,
    threshold_sample,
    vp_add_noise,
    vp_velocity,
)

__all__ = ["DDIMScheduler", "SchedulerOutput", "make_betas"]

@dataclass(frozen=True)
class DDIMConfig:
    num_train_timesteps: int = 1000
    beta_start: float = 0.0001
    beta_end: float = 0.02
    beta_schedule: str = "linear"
    clip_sample: bool = True
    clip_sample_range: float = 1.0
    set_alpha_to_one: bool = True
    steps_offset: int = 0
    prediction_type: str = "epsilon"
    timestep_spacing: str = "leading"
    thresholding: bool = False
    dynamic_thresholding_ratio: float = 0.995
    sample_max_value: float = 1.0


class DDIMScheduler:
    """Deterministic (eta = 0) or stochastic DDIM sampling over a subset of the training timesteps."""

    def __init__(self, config: DDIMConfig):
        if config.prediction_type not in PREDICTION_TYPES:
            raise ConfigError(f"prediction_type '{config.prediction_type}' unknown; use {', '.join(PREDICTION_TYPES)}")
        if config.timestep_spacing not in TIMESTEP_SPACINGS:
            spacings = ", ".join(TIMESTEP_SPACINGS)
            raise ConfigError(f"timestep_spacing '{config.timestep_spacing}' unknown; use {spacings}")
        self.config = config
        n = config.num_train_timesteps
        betas = make_betas(config.beta_schedule, config.beta_start, config.beta_end, n)
        self.alphas_cumprod = alphas_cumprod(betas)  # abar_t = prod_s (1 - beta_s)
        self.final_alpha_cumprod = np.float32(1.0) if config.set_alpha_to_one else self.alphas_cumprod[0]
        self.init_noise_sigma = 1.0
        self.num_inference_steps: int | None = None
        self.timesteps = np.arange(n)[::-1].astype(np.int64)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> DDIMScheduler:
        """Build from a scheduler_config.json dict (other schedulers' configs are accepted as in diffusers)."""
        return cls(config_from_dict(DDIMConfig, config, "DDIM"))

    def set_timesteps(self, num_inference_steps: int) -> None:
        """Choose the sampling timesteps (diffusers' 'leading' / 'trailing' / 'linspace' spacing)."""
        c = self.config
        t = spaced_timesteps(c.timestep_spacing, c.num_train_timesteps, num_inference_steps, c.steps_offset)
        t = t.astype(np.int64)
        self.num_inference_steps = num_inference_steps
        self.timesteps = t

    def alpha_prev(self, timestep: int) -> np.float32:
        """abar at the schedule's step after `timestep` (t - num_train // n; final_alpha_cumprod past t = 0)."""
        prev_t = int(timestep) - self.config.num_train_timesteps // self.num_inference_steps
        return self.alphas_cumprod[prev_t] if prev_t >= 0 else self.final_alpha_cumprod

    def predict_x0_eps(self, model_output: jt.Var, timestep: int, sample: jt.Var) -> tuple[jt.Var, jt.Var]:
        """(x0, eps) from the model output at `timestep` (common.predict_x0_eps)."""
        return predict_x0_eps(model_output, sample, self.alphas_cumprod[int(timestep)], self.config.prediction_type)

    def step(
        self,
        model_output: jt.Var,
        timestep: int,
        sample: jt.Var,
        eta: float = 0.0,
        generator: np.random.Generator | None = None,
        variance_noise: jt.Var | None = None,
        use_clipped_model_output: bool = False,
    ) -> SchedulerOutput:
        """x_{t-1} = sqrt(a_prev) x0 + sqrt(1 - a_prev - sigma^2) eps + sigma z  (DDIM eq. 12)."""
        if self.num_inference_steps is None:
            raise ConfigError("call set_timesteps(n) before step()")
        timestep = int(timestep)
        a, a_prev = self.alphas_cumprod[timestep], self.alpha_prev(timestep)
        x0, eps = self.predict_x0_eps(model_output, timestep, sample)
        if self.config.thresholding:
            x0 = threshold_sample(x0, self.config.dynamic_thresholding_ratio, self.config.sample_max_value)
        elif self.config.clip_sample:
            r = self.config.clip_sample_range
            x0 = x0.clamp(-r, r)
        std = ddim_sigma(a, a_prev, eta)  # float32 throughout, as diffusers
        if use_clipped_model_output:
            eps = predict_x0_eps(x0, sample, a, "sample")[1]  # eps = (x_t - sqrt(a) x0) / sqrt(1 - a)
        noise = step_noise(model_output, generator, variance_noise, "DDIM") if eta > 0 else None
        return SchedulerOutput(ddim_step(x0, eps, a_prev, std, noise), x0)

    def add_noise(self, original: jt.Var, noise: jt.Var, timesteps) -> jt.Var:
        """q(x_t | x_0): sqrt(a_t) x_0 + sqrt(1 - a_t) noise."""
        return vp_add_noise(self.alphas_cumprod, original, noise, timesteps)

    def get_velocity(self, sample: jt.Var, noise: jt.Var, timesteps) -> jt.Var:
        """v = sqrt(a_t) noise - sqrt(1 - a_t) x_0 (the v-prediction target)."""
        return vp_velocity(self.alphas_cumprod, sample, noise, timesteps)

    def scale_model_input(self, sample: jt.Var, timestep: int | None = None) -> jt.Var:
        return sample
