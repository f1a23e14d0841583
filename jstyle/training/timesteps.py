"""Training timesteps: uniform over SD's discrete schedule, or the Style-friendly SNR sampler.

Style-friendly (Choi et al., "Style-Friendly SNR Sampler for Style-Driven Generation", CVPR 2025,
arXiv:2411.14793v3 sec. 3.2 eq. 6): log-SNR lambda ~ N(mu, sigma^2) with mu = -6, sigma = 2 (fig. 6: "unless
specified, we use mu = -6, sigma = 2"; sigma = 2 was best on SD3.5), biasing training to high noise where style
emerges. The paper maps lambda to a rectified-flow time, t = 1 / (1 + exp(lambda / 2)). SD 1.x/2.x are discrete
variance-preserving models instead, whose timestep t has log-SNR lambda_t = log(abar_t / (1 - abar_t)) (decreasing
in t); a drawn lambda becomes the timestep whose lambda_t is nearest. SD 2.1's schedule spans lambda_999 = -5.36
.. lambda_0 = +7.07, so every draw below -5.36 (62 % of them at mu -6, sigma 2) lands on t = 999.
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError

__all__ = ["TIMESTEP_SAMPLINGS", "STYLE_FRIENDLY_MEAN", "STYLE_FRIENDLY_STD", "log_snr", "nearest_timestep",
           "sample_timesteps"]

TIMESTEP_SAMPLINGS = ("uniform", "style-friendly")
STYLE_FRIENDLY_MEAN = -6.0  # arXiv:2411.14793v3 sec. 3.2 and fig. 6
STYLE_FRIENDLY_STD = 2.0  # fig. 6 (the best sigma for SD3.5)


def log_snr(alphas_cumprod: np.ndarray) -> np.ndarray:
    """lambda_t = log(abar_t / (1 - abar_t)) per discrete timestep (float64)."""
    a = np.asarray(alphas_cumprod, dtype=np.float64)
    return np.log(a) - np.log1p(-a)


def nearest_timestep(lam: np.ndarray, alphas_cumprod: np.ndarray) -> np.ndarray:
    """The timestep whose log-SNR is nearest to each lambda (int64; below lambda_T-1 -> T-1, above lambda_0 -> 0)."""
    table = log_snr(alphas_cumprod)
    return np.abs(np.asarray(lam, dtype=np.float64)[:, None] - table[None, :]).argmin(axis=1).astype(np.int64)


def sample_timesteps(rng: np.random.Generator, n: int, alphas_cumprod: np.ndarray, sampling: str = "uniform",
                     mean: float = STYLE_FRIENDLY_MEAN, std: float = STYLE_FRIENDLY_STD) -> np.ndarray:
    """n training timesteps (int64): uniform over the schedule (one rng.integers call, as diffusers' scripts
    draw), or style-friendly: lambda ~ N(mean, std^2) (one rng.normal call) mapped by `nearest_timestep`."""
    if sampling == "uniform":
        return rng.integers(0, len(alphas_cumprod), size=n).astype(np.int64)
    if sampling == "style-friendly":
        return nearest_timestep(rng.normal(mean, std, size=n), alphas_cumprod)
    raise ConfigError(f"timestep_sampling={sampling!r}: use one of {', '.join(TIMESTEP_SAMPLINGS)}")
