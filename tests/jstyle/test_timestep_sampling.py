"""LoRA training timesteps: uniform draws exactly as before; the style-friendly sampler's log-SNR ~ N(-6, 2^2)
(Choi et al., CVPR 2025) mapped to SD's nearest discrete timestep; the trainer draws with its config's sampler."""

from __future__ import annotations

import math

import numpy as np
import pytest

from jstyle.errors import ConfigError
from jstyle.schedulers.common import alphas_cumprod, make_betas
from jstyle.training import LoRATrainConfig
from jstyle.training.timesteps import log_snr, nearest_timestep, sample_timesteps

from ..tolerance import assert_close

SD = alphas_cumprod(make_betas("scaled_linear", 0.00085, 0.012, 1000))  # SD 1.x/2.x (and the demo model's)
N = 20000


def test_uniform_draws_are_todays_bit_for_bit():
    # before the sampler existed the trainer drew rng.integers(0, num_train_timesteps, size=B); the same call
    # on the same stream gives the same timesteps and leaves the stream where it did (the noise after it unchanged)
    for seed, n in ((0, 1), (3, 2), (7, 5)):
        old, new = np.random.default_rng(seed), np.random.default_rng(seed)
        want = old.integers(0, 1000, size=n).astype(np.int64)
        got = sample_timesteps(new, n, SD)
        assert got.dtype == np.int64 and np.array_equal(got, want)
        assert old.bit_generator.state == new.bit_generator.state


def test_style_friendly_log_snr_is_normal_at_the_papers_mean_and_spread():
    lam = np.random.default_rng(0).normal(-6.0, 2.0, size=N)  # what sample_timesteps draws for seed 0
    t = sample_timesteps(np.random.default_rng(0), N, SD, "style-friendly")
    assert np.array_equal(t, nearest_timestep(lam, SD))
    # sample mean and std of N draws: standard errors 2/sqrt(N) = 0.014 and 2/sqrt(2N) = 0.010; 4 of each
    assert_close(lam.mean(), -6.0, atol=4 * 2 / math.sqrt(N), what="mean log-SNR of the draws")
    assert_close(lam.std(), 2.0, atol=4 * 2 / math.sqrt(2 * N), what="std of the draws")
    table = log_snr(SD)
    assert_close([table[0], table[999]], [7.0694, -5.3640], atol=1e-4, what="SD's log-SNR range")
    # below lambda_999 everything lands on t = 999: P = Phi((lambda_999 + 6) / 2) = 0.6247; binomial std 0.0034
    p999 = 0.5 * (1 + math.erf((table[999] + 6) / (2 * math.sqrt(2))))
    assert_close((t == 999).mean(), p999, atol=4 * math.sqrt(p999 * (1 - p999) / N), what="share at t = 999")
    # the mapped timesteps' mean log-SNR is that of lambda clipped to [lambda_999, lambda_0], E by quadrature of the
    # normal density, up to the rounding to the nearest timestep (neighbours differ by at most 0.70, near t = 0)
    grid = np.linspace(-6 - 12, -6 + 12, 200001)
    dens = np.exp(-0.5 * ((grid + 6) / 2) ** 2) / (2 * math.sqrt(2 * math.pi))
    want = float(np.sum(np.clip(grid, table[999], table[0]) * dens) * (grid[1] - grid[0]))
    sd_clip = float(np.sqrt(np.sum((np.clip(grid, table[999], table[0]) - want) ** 2 * dens) * (grid[1] - grid[0])))
    assert_close(table[t].mean(), want, atol=4 * sd_clip / math.sqrt(N) + np.abs(np.diff(table)).max() / 2,
                 what="mean log-SNR of the mapped timesteps")
    # the high-noise end: -4.9 here, against the schedule's mean log-SNR -0.97 (std 2.39) for uniform timesteps
    assert -5.0 < want < -4.8
    uniform = table[sample_timesteps(np.random.default_rng(1), N, SD)]
    assert_close(uniform.mean(), table.mean(), atol=4 * table.std() / math.sqrt(N), what="uniform mean log-SNR")
    assert_close(table.mean(), -0.9665, atol=1e-4, what="the schedule's mean log-SNR")


def test_nearest_timestep_is_the_nearest_on_the_schedule():
    table = log_snr(SD)
    lam = np.random.default_rng(2).uniform(table[999] - 3, table[0] + 3, size=2000)
    t = nearest_timestep(lam, SD)
    gap = np.abs(table[t] - lam)
    # no other timestep is nearer (brute force over all 1000) and outside the range the ends are taken
    assert np.all(gap <= np.abs(table[None, :] - lam[:, None]).min(axis=1))
    assert np.all(t[lam < table[999]] == 999) and np.all(t[lam > table[0]] == 0)
    assert np.all(np.diff(t[np.argsort(lam)]) <= 0)  # higher log-SNR, earlier timestep


def test_trainer_draws_with_its_configs_sampler(monkeypatch, tmp_path):
    from jstyle.training import trainer as T

    calls = []

    def spy(rng, n, a, sampling="uniform", mean=-6.0, std=2.0):
        calls.append((n, sampling, mean, std, a is not None and len(a)))
        return sample_timesteps(rng, n, a, sampling, mean, std)

    monkeypatch.setattr(T, "sample_timesteps", spy)

    class Drawn(Exception):
        pass

    class Sched:  # what compute_loss uses of the scheduler
        alphas_cumprod = SD

        def add_noise(self, z, noise, t):
            raise Drawn(t)  # stop before the UNet: only the draw is under test

    tr = T.LoRATrainer.__new__(T.LoRATrainer)
    tr.cfg = LoRATrainConfig(timestep_sampling="style-friendly", snr_mean=-5.0, snr_std=1.5)
    tr.scheduler = Sched()
    tr.encode_latents = lambda pixels, rng: T.jt.zeros((3, 4, 2, 2))
    batch = T.Batch(np.zeros((3, 3, 16, 16), np.float32), ["a", "b", "c"])
    with pytest.raises(Drawn) as e:
        tr.compute_loss(batch, np.random.default_rng(0))
    assert calls == [(3, "style-friendly", -5.0, 1.5, 1000)]
    t = e.value.args[0]
    assert t.dtype == np.int64 and t.shape == (3,) and t.min() >= 0 and t.max() <= 999


def test_bad_sampler_settings_are_one_line_errors():
    with pytest.raises(ConfigError, match="timestep_sampling='snr'.*uniform, style-friendly"):
        LoRATrainConfig(timestep_sampling="snr")
    with pytest.raises(ConfigError, match="snr_std"):
        LoRATrainConfig(timestep_sampling="style-friendly", snr_std=0.0)
