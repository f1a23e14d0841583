"""DPM-Solver++(2M) (Lu et al. 2022, arXiv:2211.01095), following diffusers' DPMSolverMultistepScheduler.

Supported: algorithm_type 'dpmsolver++', solver_order 1 or 2, solver_type 'midpoint', lower_order_final,
euler_at_final, final_sigmas_type 'zero' / 'sigma_min', lambda_min_clipped, epsilon / v_prediction / sample.
"""

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
    as_index_array,
    check_choice,
    config_from_dict,
    f32,
    make_betas,
    per_sample,
    schedule_index,
    threshold_sample,
    vp_x0_eps,
)

__all__ = ["DPMSolverMultistepScheduler", "DPMSolverConfig"]

_UNSUPPORTED = (
    "use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "use_lu_lambdas", "use_flow_sigmas",
    "use_dynamic_shifting", "rescale_betas_zero_snr", "trained_betas",
)


@dataclass(frozen=True)
class DPMSolverConfig:
    num_train_timesteps: int = 1000
    beta_start: float = 0.0001
    beta_end: float = 0.02
    beta_schedule: str = "linear"
    solver_order: int = 2
    prediction_type: str = "epsilon"
    algorithm_type: str = "dpmsolver++"
    solver_type: str = "midpoint"
    lower_order_final: bool = True
    euler_at_final: bool = False
    final_sigmas_type: str = "zero"
    lambda_min_clipped: float = -float("inf")
    variance_type: str | None = None
    timestep_spacing: str = "linspace"
    steps_offset: int = 0
    thresholding: bool = False
    dynamic_thresholding_ratio: float = 0.995
    sample_max_value: float = 1.0


def alpha_sigma(sigma: np.ndarray | np.float32) -> tuple:
    """VP noise level from sigma = sigma_t / alpha_t: alpha_t = 1 / sqrt(sigma^2 + 1), sigma_t = sigma alpha_t."""
    alpha_t = f32(1) / np.sqrt(sigma * sigma + f32(1))
    return alpha_t, sigma * alpha_t


def log_snr(sigma: np.float32) -> np.float32:
    """lambda_t = log(alpha_t) - log(sigma_t), the half log-SNR the solver steps in (+inf at sigma = 0)."""
    alpha_t, sigma_t = alpha_sigma(sigma)
    with np.errstate(divide="ignore"):
        return np.log(alpha_t) - np.log(sigma_t)


class DPMSolverMultistepScheduler:
    """Multistep DPM-Solver++ in the data-prediction (x0) form; keeps the previous x0 between steps."""

    def __init__(self, config: DPMSolverConfig):
        check_choice("DPMSolver", "algorithm_type", config.algorithm_type, ("dpmsolver++",))
        check_choice("DPMSolver", "solver_order", config.solver_order, (1, 2))
        check_choice("DPMSolver", "solver_type", config.solver_type, ("midpoint",))
        check_choice("DPMSolver", "prediction_type", config.prediction_type, PREDICTION_TYPES)
        check_choice("DPMSolver", "timestep_spacing", config.timestep_spacing, TIMESTEP_SPACINGS)
        check_choice("DPMSolver", "final_sigmas_type", config.final_sigmas_type, ("zero", "sigma_min"))
        if config.variance_type in ("learned", "learned_range"):
            raise ConfigError(f"DPMSolver: variance_type '{config.variance_type}' is not supported; remove it")
        self.config = config
        n = config.num_train_timesteps
        betas = make_betas(config.beta_schedule, config.beta_start, config.beta_end, n)
        self.alphas_cumprod = alphas_cumprod(betas)  # abar_t = prod_s (1 - beta_s)
        one = f32(1)
        # lambda_t = log sqrt(abar_t) - log sqrt(1 - abar_t) on the training grid (for lambda_min_clipped)
        self.lambda_t = np.log(np.sqrt(self.alphas_cumprod)) - np.log(np.sqrt(one - self.alphas_cumprod))
        self.train_sigmas = np.sqrt((one - self.alphas_cumprod) / self.alphas_cumprod)  # sigma = sigma_t / alpha_t
        self.init_noise_sigma = 1.0
        self.num_inference_steps: int | None = None
        self.timesteps = np.arange(n)[::-1].astype(np.int64)
        self.sigmas = self.train_sigmas[::-1].copy()
        self._reset()

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> DPMSolverMultistepScheduler:
        """Build from a scheduler_config.json dict (keys of other schedulers are ignored, as in diffusers)."""
        return cls(config_from_dict(DPMSolverConfig, config, "DPMSolver", unsupported=_UNSUPPORTED))

    def _reset(self) -> None:
        self.model_outputs: list[jt.Var | None] = [None] * self.config.solver_order
        self.lower_order_nums = 0
        self.step_index: int | None = None
        self.begin_index: int | None = None

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start stepping at this index of `timesteps` (image-to-image), instead of looking the timestep up."""
        self.begin_index = begin_index

    def set_timesteps(self, num_inference_steps: int) -> None:
        """Timesteps (spaced as diffusers, dropping the last of n+1 points) and sigmas, ending at sigma_last."""
        c, n = self.config, num_inference_steps
        if not 0 < n <= c.num_train_timesteps:
            raise ConfigError(f"num_inference_steps must be in 1..{c.num_train_timesteps}, got {n}")
        clipped = int(np.searchsorted(self.lambda_t[::-1], c.lambda_min_clipped))  # drop lambda < lambda_min
        last = c.num_train_timesteps - clipped
        if c.timestep_spacing == "linspace":
            t = np.linspace(0, last - 1, n + 1).round()[::-1][:-1]
        elif c.timestep_spacing == "leading":
            t = (np.arange(0, n + 1) * (last // (n + 1))).round()[::-1][:-1] + c.steps_offset
        else:
            t = np.arange(last, 0, -c.num_train_timesteps / n).round() - 1
        t = t.astype(np.int64)
        a0 = self.alphas_cumprod[0]
        sigma_last = np.sqrt((f32(1) - a0) / a0) if c.final_sigmas_type == "sigma_min" else f32(0)
        self.sigmas = np.concatenate([self.train_sigmas[t], [sigma_last]]).astype(np.float32)
        self.timesteps = t
        self.num_inference_steps = len(t)
        self._reset()

    def scale_model_input(self, sample: jt.Var, timestep: int | None = None) -> jt.Var:
        return sample

    def _init_step_index(self, timestep: float) -> None:
        if self.begin_index is not None:
            self.step_index = self.begin_index
            return
        index = schedule_index(self.timesteps, timestep)
        self.step_index = len(self.timesteps) - 1 if index is None else index

    def convert_model_output(self, model_output: jt.Var, sample: jt.Var) -> jt.Var:
        """The data prediction x_theta(x_t, t) that DPM-Solver++ integrates (x0 from eps, v or x0)."""
        # The VP relations of common.vp_x0_eps, with DPM-Solver's own alpha_t, sigma_t: derived from the schedule's
        # sigma = sigma_t / alpha_t (alpha_sigma), which rounds differently from sqrt(abar), sqrt(1 - abar) and also
        # serves the final sigma (0 or sigma_min), which is not on the training grid.
        alpha_t, sigma_t = alpha_sigma(self.sigmas[self.step_index])
        x0, _ = vp_x0_eps(model_output, sample, float(alpha_t), float(sigma_t), self.config.prediction_type)
        if self.config.thresholding:
            x0 = threshold_sample(x0, self.config.dynamic_thresholding_ratio, self.config.sample_max_value)
        return x0

    def step(
        self,
        model_output: jt.Var,
        timestep: int,
        sample: jt.Var,
        generator: np.random.Generator | None = None,
        variance_noise: jt.Var | None = None,
    ) -> SchedulerOutput:
        """One DPM-Solver++ step from sigmas[i] to sigmas[i+1]; first order at the start (and end, see config).

        The solver is deterministic: generator / variance_noise are accepted, so one sampling loop serves every
        scheduler, and unused."""
        if self.num_inference_steps is None:
            raise ConfigError("call set_timesteps(n) before step()")
        if self.step_index is None:
            self._init_step_index(timestep.item() if isinstance(timestep, jt.Var) else timestep)
        c, i = self.config, self.step_index
        n = len(self.timesteps)
        lower_order_final = i == n - 1 and (
            c.euler_at_final or (c.lower_order_final and n < 15) or c.final_sigmas_type == "zero"
        )
        dtype = model_output.dtype
        sample = sample.float32()
        x0 = self.convert_model_output(model_output.float32(), sample)
        self.model_outputs = self.model_outputs[1:] + [x0]
        if c.solver_order == 1 or self.lower_order_nums < 1 or lower_order_final:
            prev = self._first_order(x0, sample)
        else:
            prev = self._second_order(self.model_outputs[-1], self.model_outputs[-2], sample)
        self.lower_order_nums = min(self.lower_order_nums + 1, c.solver_order)
        self.step_index += 1
        return SchedulerOutput(prev.cast(dtype), x0)

    def _first_order(self, x0: jt.Var, sample: jt.Var) -> jt.Var:
        """DPM-Solver++(1), i.e. DDIM: x_t = (sigma_t / sigma_s) x_s - alpha_t (e^{-h} - 1) x0."""
        i = self.step_index
        alpha_t, sigma_t = alpha_sigma(self.sigmas[i + 1])
        _, sigma_s = alpha_sigma(self.sigmas[i])
        h = log_snr(self.sigmas[i + 1]) - log_snr(self.sigmas[i])  # h = lambda_t - lambda_s
        return float(sigma_t / sigma_s) * sample - float(alpha_t * (np.exp(-h) - f32(1))) * x0

    def _second_order(self, m0: jt.Var, m1: jt.Var, sample: jt.Var) -> jt.Var:
        """DPM-Solver++(2M), Algorithm 2 of Lu et al. (midpoint form)."""
        i = self.step_index
        alpha_t, sigma_t = alpha_sigma(self.sigmas[i + 1])
        _, sigma_s0 = alpha_sigma(self.sigmas[i])
        lam_t, lam_s0, lam_s1 = (log_snr(self.sigmas[j]) for j in (i + 1, i, i - 1))
        # 1. h_i = lambda_{t_i} - lambda_{t_{i-1}},  r_i = h_{i-1} / h_i
        h, h_0 = lam_t - lam_s0, lam_s0 - lam_s1
        r0 = h_0 / h
        # 2. D_i = x0_i + 1/(2 r_i) (x0_i - x0_{i-1})  (written as D0 + D1 / 2, D1 = (x0_i - x0_{i-1}) / r_i)
        d1 = float(f32(1) / r0) * (m0 - m1)
        # 3. x_{t_i} = (sigma_{t_i} / sigma_{t_{i-1}}) x_{t_{i-1}} - alpha_{t_i} (e^{-h_i} - 1) D_i
        coeff = alpha_t * (np.exp(-h) - f32(1))
        return float(sigma_t / sigma_s0) * sample - float(coeff) * m0 - float(f32(0.5) * coeff) * d1

    def add_noise(self, original: jt.Var, noise: jt.Var, timesteps) -> jt.Var:
        """q(x_t | x_0) at the schedule's sigma for each timestep: alpha_t x_0 + sigma_t noise."""
        t = as_index_array(timesteps)
        if self.begin_index is None:
            last = len(self.timesteps) - 1
            indices = [last if (j := schedule_index(self.timesteps, v)) is None else j for v in t]
        else:
            indices = [self.step_index if self.step_index is not None else self.begin_index] * len(t)
        alpha_t, sigma_t = alpha_sigma(self.sigmas[indices])
        return per_sample(alpha_t, original.ndim, original.dtype) * original + \
            per_sample(sigma_t, original.ndim, original.dtype) * noise
