"""Pieces shared by the schedulers and the methods: beta schedules, timestep spacing, config parsing, noise,
broadcasting, and the diffusion math written once (model output -> x0 / eps, the DDIM update, q(x_t | x_0)).

Scalar coefficients are computed in numpy float32, one rounding per operation, in the order
diffusers computes them with 0-d float32 tensors, so trajectories agree to float32 rounding.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple, TypeVar

import jittor as jt
import numpy as np

from ..errors import ConfigError

__all__ = [
    "PREDICTION_TYPES", "TIMESTEP_SPACINGS", "SchedulerOutput", "make_betas", "betas_for_alpha_bar",
    "alphas_cumprod", "check_choice", "config_from_dict", "spaced_timesteps", "step_noise", "batch_randn",
    "per_sample", "as_index_array", "f32", "vp_coefficients", "vp_add_noise", "vp_velocity", "schedule_index",
    "threshold_sample", "vp_x0_eps", "predict_x0_eps", "ddim_sigma", "ddim_step",
]

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
f32 = np.float32

C = TypeVar("C")


class SchedulerOutput(NamedTuple):
    prev_sample: jt.Var
    pred_original_sample: jt.Var


def betas_for_alpha_bar(n: int, max_beta: float = 0.999) -> np.ndarray:
    """Cosine schedule (Nichol & Dhariwal 2021, eq. 17): beta_i = 1 - abar((i+1)/n) / abar(i/n), capped."""

    def alpha_bar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = [min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), max_beta) for i in range(n)]
    return np.array(betas, dtype=np.float32)


def make_betas(schedule: str, start: float, end: float, n: int) -> np.ndarray:
    """float32 betas; scaled_linear: beta_t = (linspace(sqrt(start), sqrt(end)))^2 as in LDM."""
    if schedule == "linear":
        return np.linspace(start, end, n, dtype=np.float32)
    if schedule == "scaled_linear":
        return np.linspace(start**0.5, end**0.5, n, dtype=np.float32) ** 2
    if schedule == "squaredcos_cap_v2":
        return betas_for_alpha_bar(n)
    raise ConfigError(f"beta_schedule '{schedule}' is not supported; use {', '.join(BETA_SCHEDULES)}")


def alphas_cumprod(betas: np.ndarray) -> np.ndarray:
    """abar_t = prod_{s<=t} (1 - beta_s), float32 terms accumulated in float64 as torch's CPU cumprod does."""
    return np.cumprod((np.float32(1) - betas).astype(np.float64)).astype(np.float32)


def check_choice(scheduler: str, key: str, value: Any, choices: Sequence[Any]) -> None:
    """Raise a one-line ConfigError unless `value` is one of `choices`."""
    if value not in choices:
        raise ConfigError(f"{scheduler}: {key} '{value}' is not supported; use {', '.join(map(str, choices))}")


def config_from_dict(config_cls: type[C], config: dict[str, Any], scheduler: str,
                     unsupported: Iterable[str] = ("rescale_betas_zero_snr", "trained_betas")) -> C:
    """Dataclass config from a scheduler_config.json dict; keys of other schedulers are ignored, as in
    diffusers' from_config, and options set to a truthy value in `unsupported` raise ConfigError."""
    wanted = [k for k in unsupported if config.get(k)]
    if wanted:
        raise ConfigError(f"{scheduler}: {', '.join(wanted)} not supported; remove it from scheduler_config.json")
    fields = config_cls.__dataclass_fields__
    return config_cls(**{k: v for k, v in config.items() if k in fields})


def threshold_sample(sample: jt.Var, ratio: float, max_value: float) -> jt.Var:
    """Dynamic thresholding (Imagen, Saharia et al. 2022), per sample: s = clamp(quantile(|x0|, ratio), 1, max),
    x0 = clamp(x0, -s, s) / s; the quantile interpolates linearly between order statistics, as torch.quantile."""
    flat = sample.float32().reshape(sample.shape[0], -1)
    rank = f32(ratio) * f32(flat.shape[1] - 1)
    lo, hi, w = int(np.floor(rank)), int(np.ceil(rank)), float(rank - np.floor(rank))
    _, ordered = jt.argsort(flat.abs(), dim=1)
    below, above = ordered[:, lo], ordered[:, hi]
    q = below + w * (above - below) if w < 0.5 else above - (above - below) * (1.0 - w)  # torch.lerp
    s = q.clamp(1.0, float(max_value)).reshape(-1, 1).broadcast(flat.shape)
    return (jt.minimum(jt.maximum(flat, -s), s) / s).reshape(sample.shape).cast(sample.dtype)


def spaced_timesteps(spacing: str, num_train: int, n: int, steps_offset: int = 0, rounded: bool = True) -> np.ndarray:
    """Descending float64 sampling timesteps (table 2 of Lin et al. 2023, 'Common diffusion noise schedules');
    `rounded=False` keeps linspace's fractional values (Euler schedulers)."""
    if not 0 < n <= num_train:
        raise ConfigError(f"num_inference_steps must be in 1..{num_train}, got {n}")
    if spacing == "linspace":
        t = np.linspace(0, num_train - 1, n)
        return (t.round() if rounded else t)[::-1].copy()
    if spacing == "leading":
        return (np.arange(0, n) * (num_train // n)).round()[::-1] + float(steps_offset)
    if spacing == "trailing":
        return np.round(np.arange(num_train, 0, -num_train / n)) - 1.0
    raise ConfigError(f"timestep_spacing '{spacing}' is not supported; use {', '.join(TIMESTEP_SPACINGS)}")


Generators = np.random.Generator | Sequence[np.random.Generator]


def step_noise(like: jt.Var, generator: Generators | None, variance_noise: jt.Var | None, scheduler: str) -> jt.Var:
    """The noise of a stochastic step: `variance_noise` if given, else drawn from `generator` (never a global RNG);
    a list of generators draws one per sample, so a sample's noise does not depend on its batch."""
    if variance_noise is not None:
        if tuple(variance_noise.shape) != tuple(like.shape):
            raise ConfigError(f"{scheduler}: variance_noise has shape {tuple(variance_noise.shape)}, "
                              f"expected {tuple(like.shape)}")
        return variance_noise.cast(like.dtype)
    if generator is None:
        raise ConfigError(f"{scheduler}: a stochastic step needs generator= (numpy Generator) or variance_noise=")
    return batch_randn(like.shape, generator, str(like.dtype))


def batch_randn(shape: Sequence[int], generator: Generators, dtype: str = "float32") -> jt.Var:
    """Standard normal noise from one numpy generator, or from one generator per sample (shape[0] of them)."""
    from ..ops import randn

    if isinstance(generator, np.random.Generator):
        return randn(shape, generator, dtype)
    generator = list(generator)
    if len(generator) != shape[0]:
        raise ConfigError(f"{len(generator)} generators for a batch of {shape[0]}; pass one per sample")
    return jt.concat([randn((1, *shape[1:]), g, dtype) for g in generator])


def per_sample(values: np.ndarray, ndim: int, dtype) -> jt.Var:
    """[B] per-sample coefficients -> a [B, 1, ..., 1] Var that broadcasts against a rank-`ndim` tensor."""
    return jt.array(np.asarray(values, dtype=np.float32).reshape((-1,) + (1,) * (ndim - 1))).cast(dtype)


def as_index_array(timesteps: int | Sequence[int] | np.ndarray | jt.Var) -> np.ndarray:
    """Timesteps given as an int, a list, a numpy array or a Var -> 1-D numpy array."""
    t = timesteps.numpy() if isinstance(timesteps, jt.Var) else np.asarray(timesteps)
    return t.reshape(-1)


def vp_coefficients(alphas_cumprod: np.ndarray, timesteps, ndim: int, dtype) -> tuple[jt.Var, jt.Var]:
    """Per-sample sqrt(abar_t) and sqrt(1 - abar_t) for a variance-preserving process, shaped to broadcast."""
    a = alphas_cumprod[as_index_array(timesteps).astype(np.int64)]
    return per_sample(np.sqrt(a), ndim, dtype), per_sample(np.sqrt(f32(1) - a), ndim, dtype)


def vp_add_noise(alphas_cumprod: np.ndarray, original: jt.Var, noise: jt.Var, timesteps) -> jt.Var:
    """q(x_t | x_0) (DDPM eq. 4): x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) noise."""
    sa, sb = vp_coefficients(alphas_cumprod, timesteps, original.ndim, original.dtype)
    return sa * original + sb * noise


def vp_velocity(alphas_cumprod: np.ndarray, sample: jt.Var, noise: jt.Var, timesteps) -> jt.Var:
    """v = sqrt(abar_t) noise - sqrt(1 - abar_t) x_0 (Salimans & Ho 2022, the v-prediction target)."""
    sa, sb = vp_coefficients(alphas_cumprod, timesteps, sample.ndim, sample.dtype)
    return sa * noise - sb * sample


def schedule_index(timesteps: np.ndarray, timestep: float) -> int | None:
    """Position of `timestep` in the schedule (the second match if repeated, as diffusers), None if absent."""
    hits = np.nonzero(timesteps == timestep)[0]
    if len(hits) == 0:
        return None
    return int(hits[1] if len(hits) > 1 else hits[0])


def vp_x0_eps(model_output: jt.Var, sample: jt.Var, alpha_t: float, sigma_t: float,
              prediction_type: str) -> tuple[jt.Var, jt.Var]:
    """(x0, eps) of x_t = alpha_t x0 + sigma_t eps (alpha_t^2 + sigma_t^2 = 1) from the model's output."""
    if prediction_type == "epsilon":  # x0 = (x_t - sigma_t eps) / alpha_t
        return (sample - sigma_t * model_output) / alpha_t, model_output
    if prediction_type == "v_prediction":  # v = alpha_t eps - sigma_t x0 (Salimans & Ho 2022)
        return alpha_t * sample - sigma_t * model_output, alpha_t * model_output + sigma_t * sample
    if prediction_type == "sample":  # eps = (x_t - alpha_t x0) / sigma_t
        return model_output, (sample - alpha_t * model_output) / sigma_t
    raise ConfigError(f"prediction_type '{prediction_type}' unknown; use {', '.join(PREDICTION_TYPES)}")


def predict_x0_eps(model_output: jt.Var, sample: jt.Var, alpha_bar: np.float32,
                   prediction_type: str) -> tuple[jt.Var, jt.Var]:
    """(x0, eps) of a sample at noise level abar: `vp_x0_eps` with alpha_t = sqrt(abar), sigma_t = sqrt(1 - abar)
    (DDIM eq. 9: x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar)); float32 roundings of the coefficients, as diffusers."""
    sa, sb = float(np.sqrt(alpha_bar)), float(np.sqrt(f32(1) - alpha_bar))
    return vp_x0_eps(model_output, sample, sa, sb, prediction_type)


def ddim_sigma(alpha_bar: np.float32, alpha_bar_prev: np.float32, eta: float) -> np.float32:
    """sigma_t(eta) = eta sqrt((1 - a_prev) / (1 - a_t)) sqrt(1 - a_t / a_prev) (DDIM eq. 16), in float32."""
    one = f32(1)
    variance = ((one - alpha_bar_prev) / (one - alpha_bar)) * (one - alpha_bar / alpha_bar_prev)
    return f32(eta) * np.sqrt(variance)


def ddim_step(x0: jt.Var, eps: jt.Var, alpha_bar_prev: np.float32, sigma: float = 0.0,
              noise: jt.Var | None = None, direction_scale: float = 1.0) -> jt.Var:
    """x_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev - sigma^2) eps + sigma z (DDIM eq. 12), z = `noise` (none: 0).

    Towards more noise (inversion) it is the same update with a_prev the next level and sigma 0.
    `direction_scale` multiplies the direction term (DiffStyle's dt_lambda); the coefficients are float32."""
    sigma = f32(sigma)
    direction = np.sqrt(max(f32(1) - alpha_bar_prev - sigma * sigma, f32(0)))  # clamped: eta > 1 is not NaN
    prev = float(np.sqrt(alpha_bar_prev)) * x0 + (direction_scale * float(direction)) * eps
    if noise is not None:
        prev = prev + float(sigma) * noise
    return prev
