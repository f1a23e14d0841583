"""DDPM, DPM-Solver++(2M), Euler ancestral and DDIM/DDPM/DPM with dynamic thresholding: parity with diffusers
0.42 (tests/reference/make_scheduler_refs.py): timesteps exact, sigmas and 10-step trajectories to float32
rounding, stochastic steps fed the same noise; the scheduler table; whole tiny-sd2 text-to-image runs with dpm++2m
and euler_a."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import jittor as jt
import numpy as np
import pytest

from jstyle.errors import ConfigError
from jstyle.schedulers import (
    SCHEDULERS,
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    get_scheduler,
)
from jstyle.schedulers.common import step_noise, threshold_sample

from ..tolerance import EPS32, UINT8, assert_at_most, assert_close, f32_bound
from .conftest import cache_dir, run_reference

SCRIPT = Path(__file__).resolve().parents[1] / "reference" / "make_scheduler_refs.py"
CLASSES = {cls.__name__: cls for cls in (DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler,
                                         EulerAncestralDiscreteScheduler)}
CASES = (
    "ddpm_eps", "ddpm_v_smalllog", "ddpm_x0_large_cos",
    "dpm_eps", "dpm_v_leading", "dpm_x0_trailing_sigmamin", "dpm_order1_cos_clipped",
    "ddim_eps_thresh", "ddim_v_thresh_trailing", "ddpm_eps_thresh", "dpm_eps_thresh",
    "euler_a_eps", "euler_a_v_leading", "euler_a_eps_trailing",
)
# Scalar coefficients are rounded to float32 in diffusers' order; what remains is float32 operation order
# and the ulps of log/exp/cumprod: ~8 roundings per step, 10 steps, each up to eps32 of the trajectory's scale
# (max |x|, at least 1), and as much again for the schedules' log/exp: 160 eps32 = 1.9e-5 worst case; values
# reach ~400 for Euler with linear betas (sigma_max = 157), so the bound is relative. Measured 1.5e-6; a
# wrong coefficient or a step off by one is > 1e-3.
TRAJ_RTOL = f32_bound(10 * 8 * 2, 1.0)
# sigmas: numpy vs torch float32 cumprod over 1000 betas (0.5 ulp each: 500 eps32 = 6e-5 worst case) then a
# sqrt; measured 2.5e-7 relative (both multiply in the same order); a wrong schedule is off by > 1e-3
SIGMA_RTOL = f32_bound(1000, 0.5)


@pytest.fixture(scope="module")
def sched_ref(tiny_ref, tmp_path_factory) -> Path:
    """Folder with sched_refs.npz and sched_pipe_refs.npz, built in the checker env and cached."""
    key = hashlib.sha256(SCRIPT.read_bytes() + tiny_ref.name.encode()).hexdigest()[:12]
    out = cache_dir(tmp_path_factory, f"sched-{key}")
    if not (out / "DONE").exists():
        run_reference(SCRIPT, str(out), str(tiny_ref))
    return out


@pytest.fixture(scope="module")
def ref(sched_ref) -> dict[str, np.ndarray]:
    with np.load(sched_ref / "sched_refs.npz") as f:
        return dict(f)


def case(ref: dict[str, np.ndarray], name: str) -> tuple[dict, dict[str, np.ndarray]]:
    config = json.loads(str(ref[f"{name}/config"]))
    return config, {k.split("/", 1)[1]: v for k, v in ref.items() if k.startswith(name + "/")}


def build(config: dict):
    return CLASSES[config["class"]].from_config({k: v for k, v in config.items() if k not in ("class", "noise")})


def rel_err(out: np.ndarray, expected: np.ndarray) -> float:
    return float(np.abs(out - expected).max() / max(1.0, np.abs(expected).max()))


def test_cases_match_reference_script(ref):
    assert sorted({k.split("/")[0] for k in ref if "/" in k}) == sorted(CASES)


@pytest.mark.parametrize("name", CASES)
def test_timesteps_and_sigmas(name, ref):
    config, r = case(ref, name)
    sched = build(config)
    for n in (10, 25, 50):
        sched.set_timesteps(n)
        assert sched.timesteps.dtype == r[f"timesteps_{n}"].dtype
        np.testing.assert_array_equal(sched.timesteps, r[f"timesteps_{n}"])
        if f"sigmas_{n}" in r:
            assert_close(sched.sigmas, r[f"sigmas_{n}"], rtol=SIGMA_RTOL, atol=0)
    sched.set_timesteps(10)
    assert_close(sched.init_noise_sigma, r["init_noise_sigma"], rtol=SIGMA_RTOL)


@pytest.mark.parametrize("name", CASES)
def test_trajectory_matches_diffusers(name, ref):
    """10 steps driven by a fake model (out = a x_in + b base, numpy float32 on both sides)."""
    config, r = case(ref, name)
    sched = build(config)
    sched.set_timesteps(10)
    a, b = ref["model_ab"]
    gen = np.random.default_rng(5)
    x = jt.array(ref["x_init"]) * sched.init_noise_sigma
    prev, x0 = [], []
    for k, t in enumerate(sched.timesteps):
        x_in = sched.scale_model_input(x, t).numpy()
        out = jt.array(a * x_in + b * ref["base"])
        noise = {"given": {"variance_noise": jt.array(ref["noises"][k])}, "rng": {"generator": gen}}
        res = sched.step(out, t, x, **noise.get(config["noise"], {}))
        x = res.prev_sample
        prev.append(x.numpy())
        x0.append(res.pred_original_sample.numpy())
    assert_at_most(rel_err(np.stack(x0), r["x0"]), TRAJ_RTOL, f"{name} x0")
    assert_at_most(rel_err(np.stack(prev), r["prev"]), TRAJ_RTOL, f"{name} trajectory")
    if config["noise"] == "rng":  # the generator was drawn from exactly when diffusers drew noise
        probe = np.random.default_rng(5)
        for _ in range(int(r["noise_drawn"].sum())):
            probe.standard_normal(ref["x_init"].shape)
        assert gen.bit_generator.state == probe.bit_generator.state
    # add_noise (and get_velocity) at two timesteps of the 10-step schedule
    sched.set_timesteps(10)
    clean, noise = jt.array(ref["clean"]), jt.array(ref["noises"][0])
    noisy = sched.add_noise(clean, noise, r["add_noise_t"]).numpy()
    assert_at_most(rel_err(noisy, r["add_noise"]), TRAJ_RTOL, "add_noise")
    if "velocity" in r:
        assert_at_most(rel_err(sched.get_velocity(clean, noise, r["add_noise_t"]).numpy(), r["velocity"]), TRAJ_RTOL,
                       "velocity")


def test_threshold_sample_matches_numpy_quantile():
    """Per-sample s = clamp(quantile(|x|, 0.9), 1, 2.5): one sample below 1 (plain clip), one inside, one above"""
    rng = np.random.default_rng(2)
    scales = np.array([0.3, 1.3, 6.0], np.float32)[:, None, None, None]
    x = rng.standard_normal((3, 4, 5, 5)).astype(np.float32) * scales
    s = np.clip(np.quantile(np.abs(x.reshape(3, -1)), 0.9, axis=1), 1.0, 2.5)  # numpy's default = torch's linear
    assert s[0] == 1.0 and 1.0 < s[1] < 2.5 and s[2] == 2.5
    expected = np.clip(x, -s[:, None, None, None], s[:, None, None, None]) / s[:, None, None, None]
    out = threshold_sample(jt.array(x), 0.9, 2.5).numpy()
    # s from a sort and a linear interpolation in float32 vs numpy's float64 quantile, then a clip and one
    # division: ~4 eps32 relative worst case; bound 4x that. Measured 1.1e-7 relative
    assert_close(out, expected, rtol=16 * EPS32, atol=1e-7, what="thresholded sample")
    assert np.abs(out).max() <= 1.0


def test_dpm_state_resets_with_set_timesteps():
    """A second run after set_timesteps must not reuse the first run's model outputs (same result twice)."""
    sched = get_scheduler("dpm++2m", {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012})
    x0 = jt.array(np.linspace(-1, 1, 2 * 4 * 8 * 8, dtype=np.float32).reshape(2, 4, 8, 8))
    runs = []
    for _ in range(2):
        sched.set_timesteps(3)
        x = x0
        for t in sched.timesteps:
            x = sched.step(x * 0.5, t, x).prev_sample
        runs.append(x.numpy())
    np.testing.assert_array_equal(runs[0], runs[1])


def test_one_generator_per_sample():
    """A list of generators draws each sample's noise from its own one (so an image does not depend on its batch)."""
    like = jt.zeros((2, 4, 8, 8))
    noise = step_noise(like, [np.random.default_rng(3), np.random.default_rng(4)], None, "test").numpy()
    np.testing.assert_array_equal(noise[1:], np.random.default_rng(4).standard_normal((1, 4, 8, 8)).astype(np.float32))
    with pytest.raises(ConfigError, match="1 generators for a batch of 2"):
        step_noise(like, [np.random.default_rng(3)], None, "test")


def test_scheduler_table_and_errors():
    assert set(SCHEDULERS) == {"ddim", "ddpm", "dpm++2m", "euler_a"}
    sd_config = {"_class_name": "DDIMScheduler", "beta_schedule": "scaled_linear", "beta_start": 0.00085,
                 "beta_end": 0.012, "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1,
                 "timestep_spacing": "leading", "prediction_type": "v_prediction"}
    for name, cls in SCHEDULERS.items():
        sched = get_scheduler(name, sd_config)
        assert isinstance(sched, cls) and sched.config.prediction_type == "v_prediction"
    assert isinstance(get_scheduler("ddim", {}), DDIMScheduler)
    with pytest.raises(ConfigError, match=r"unknown scheduler 'pndm'; use one of ddim, ddpm, dpm\+\+2m, euler_a"):
        get_scheduler("pndm", sd_config)
    bad = [
        ("dpm++2m", {"use_karras_sigmas": True}, "use_karras_sigmas"),
        ("dpm++2m", {"algorithm_type": "sde-dpmsolver++"}, "algorithm_type"),
        ("dpm++2m", {"solver_order": 3}, "solver_order"),
        ("dpm++2m", {"solver_type": "heun"}, "solver_type"),
        ("ddpm", {"variance_type": "learned_range"}, "variance_type"),
        ("ddpm", {"rescale_betas_zero_snr": True}, "rescale_betas_zero_snr"),
        ("ddim", {"trained_betas": [0.1]}, "trained_betas"),
        ("euler_a", {"prediction_type": "sample"}, "prediction_type"),
        ("euler_a", {"beta_schedule": "sigmoid"}, "beta_schedule"),
        ("ddpm", {"timestep_spacing": "karras"}, "timestep_spacing"),
    ]
    for name, config, key in bad:
        with pytest.raises(ConfigError, match=key):
            get_scheduler(name, config)
    x = jt.zeros((1, 4, 2, 2))
    for name in ("ddpm", "euler_a"):
        sched = get_scheduler(name, {})
        sched.set_timesteps(4)
        with pytest.raises(ConfigError, match="generator"):
            sched.step(x, sched.timesteps[0], x)
    with pytest.raises(ConfigError, match="set_timesteps"):
        get_scheduler("dpm++2m", {}).step(x, 999, x)
    with pytest.raises(ConfigError, match="num_inference_steps"):
        get_scheduler("euler_a", {}).set_timesteps(0)


@pytest.mark.parametrize("name", ["dpm++2m", "euler_a"])
def test_text_to_image_matches_diffusers(name, tiny_ref, sched_ref, refs):
    """Tiny sd2 (v-prediction), 4 steps at 16x16 with CFG; Euler's step noise from default_rng(0) on both sides."""
    from jstyle import load_pipeline

    pipe = load_pipeline(tiny_ref / "sd2")
    images = pipe.text_to_image("a Dolphin in style_03", num_inference_steps=4, guidance_scale=7.5, height=16,
                                width=16, latents=jt.array(refs("sd2")["pipe_latents"]), scheduler=name,
                                generator=np.random.default_rng(0))
    with np.load(sched_ref / "sched_pipe_refs.npz") as f:
        expected = f[name]
    # Tolerance as test_pipeline.py: mean abs <= 1/255, max <= 2/255; the rounding alone is up to 0.5/255 (a
    # proof; measured max 0.5/255: rounding only), the rest is > 100x the float32 error of the latents
    diff = np.abs(images / 255.0 - expected)
    assert_at_most(diff.mean(), UINT8 / 255, f"{name} mean image difference")
    assert_at_most(diff.max(), 2 * UINT8 / 255, f"{name} max image difference")


def test_shared_diffusion_math():
    """common.predict_x0_eps inverts x_t = sqrt(abar) x0 + sqrt(1 - abar) eps for every prediction type, and
    ddim_step / ddim_sigma are DDIM eq. 12 / 16 (numpy float64 as the reference)."""
    from jstyle.schedulers.common import ddim_sigma, ddim_step, predict_x0_eps

    rng = np.random.default_rng(0)
    x0, eps, z = (rng.standard_normal((2, 4, 3, 3)) for _ in range(3))
    a, a_prev = np.float32(0.3), np.float32(0.6)
    xt = np.sqrt(a) * x0 + np.sqrt(1 - a) * eps
    outputs = {"epsilon": eps, "sample": x0, "v_prediction": np.sqrt(a) * eps - np.sqrt(1 - a) * x0}
    for kind, out in outputs.items():
        got = predict_x0_eps(jt.array(out.astype(np.float32)), jt.array(xt.astype(np.float32)), a, kind)
        # a few float32 operations on values ~3, divided by sqrt(abar) >= 0.55: within 8 eps32 of 5
        for g, want in zip(got, (x0, eps), strict=True):
            assert_close(g.numpy(), want, atol=8 * EPS32 * 5, what=kind)
    with pytest.raises(ConfigError, match="prediction_type 'flow' unknown"):
        predict_x0_eps(jt.array(eps), jt.array(xt), a, "flow")
    sigma = ddim_sigma(a, a_prev, 0.5)
    want_sigma = 0.5 * np.sqrt((1 - a_prev) / (1 - a) * (1 - a / a_prev))
    assert sigma.dtype == np.float32 and abs(float(sigma) - want_sigma) < 4 * EPS32  # four float32 roundings
    j = [jt.array(v.astype(np.float32)) for v in (x0, eps, z)]
    want = np.sqrt(a_prev) * x0 + np.sqrt(1 - a_prev - want_sigma**2) * eps + want_sigma * z
    assert_close(ddim_step(*j[:2], a_prev, sigma, j[2]).numpy(), want, atol=8 * EPS32 * 5)  # as above
    want = np.sqrt(a_prev) * x0 + 0.5 * np.sqrt(1 - a_prev) * eps  # sigma 0, the direction term halved
    assert_close(ddim_step(*j[:2], a_prev, direction_scale=0.5).numpy(), want, atol=8 * EPS32 * 5)
    # eta > 1 asks for sigma^2 > 1 - a_prev: the direction term is clamped to 0, not NaN
    assert_close(ddim_step(*j[:2], a_prev, ddim_sigma(a, a_prev, 3.0)).numpy(), np.sqrt(a_prev) * x0,
                 atol=8 * EPS32 * 5)
