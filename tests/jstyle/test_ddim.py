"""DDIM parity with diffusers' DDIMScheduler (timesteps exact, outputs to float32 rounding)."""

import jittor as jt
import numpy as np
import pytest

from jstyle.errors import ConfigError
from jstyle.schedulers import DDIMScheduler

from ..tolerance import assert_close, f32_bound

CASES = {
    "eps_leading": dict(prediction_type="epsilon", timestep_spacing="leading"),
    "v_trailing": dict(prediction_type="v_prediction", timestep_spacing="trailing"),
    "sample_linspace_clip": dict(prediction_type="sample", timestep_spacing="linspace", clip_sample=True),
}
# Coefficients are rounded to float32 as diffusers does; what remains is float32 operation order (Jittor fuses
# a*x + b*y into one kernel, torch rounds each op): ~4 roundings on values up to ~30, amplified by up to
# 1/sqrt(alpha_bar) = 15 where x0 is recovered at t = 999: 4 * 15 * 30 * eps32 = 2.1e-4 worst case.
# Measured 1.1e-5; a wrong coefficient or timestep is off by > 1e-2.
ATOL, RTOL = f32_bound(4 * 15, 30), 0.0


@pytest.fixture(scope="module")
def sched_refs(tiny_ref):
    with np.load(tiny_ref / "scheduler_refs.npz") as f:
        return dict(f)


def make(name: str) -> DDIMScheduler:
    config = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", set_alpha_to_one=False,
                  steps_offset=1, clip_sample=False, _class_name="DDIMScheduler")
    return DDIMScheduler.from_config({**config, **CASES[name]})


@pytest.mark.parametrize("name", sorted(CASES))
def test_ddim_matches_diffusers(name, sched_refs):
    r = sched_refs
    sched = make(name)
    for n in (25, 50):
        sched.set_timesteps(n)
        np.testing.assert_array_equal(sched.timesteps, r[f"{name}_timesteps_{n}"])
    sched.set_timesteps(25)
    sample, model_out, noise = (jt.array(r[k]) for k in ("sample", "model_out", "noise"))
    for i in (0, 12, 24):
        t = int(sched.timesteps[i])
        for eta in (0.0, 0.5):
            out = sched.step(model_out, t, sample, eta=eta, variance_noise=noise)
            assert_close(out.prev_sample.numpy(), r[f"{name}_step_{i}_eta{eta}"], atol=ATOL, rtol=RTOL)
            assert_close(out.pred_original_sample.numpy(), r[f"{name}_x0_{i}_eta{eta}"],
                                       atol=ATOL, rtol=RTOL)
    t = np.array([10, 999])
    tol = dict(atol=ATOL, rtol=RTOL)
    assert_close(sched.add_noise(sample, noise, t).numpy(), r[f"{name}_add_noise"], **tol)
    assert_close(sched.get_velocity(sample, noise, t).numpy(), r[f"{name}_velocity"], **tol)


def test_ddim_bad_config():
    with pytest.raises(ConfigError, match="prediction_type"):
        DDIMScheduler.from_config({"prediction_type": "flow"})
    with pytest.raises(ConfigError, match="num_inference_steps"):
        make("eps_leading").set_timesteps(0)
