"""DiffStyle on the tiny models: slerp math, gamma = 0 is the style's own DDIM trajectory, parity with a
PyTorch version of the same equations on diffusers' UNet (tests/reference/diffstyle_ref.py), errors.

Settings as in test_styleid.py: 16x16 images, a 10-step schedule and start_step 3 (t <= 201), because
the random tiny UNet is chaotic at high t; t_edit 100 so two of the three steps inject.
"""

from pathlib import Path

import jittor as jt
import numpy as np
import pytest

from jstyle import load_pipeline
from jstyle.errors import ConfigError, InputError
from jstyle.methods import diffstyle as ds
from jstyle.methods.inversion import ddim_invert, ddim_sample
from jstyle.methods.styleid import _as_latents

from .conftest import reference_npz
from .test_styleid import _image

REF = Path(__file__).resolve().parents[1] / "reference" / "diffstyle_ref.py"
CFG = ds.DiffStyleConfig(gamma=0.4, t_edit=100, t_boost=150, eta=1.0, omega=0.8, steps=10, start_step=3, seed=3)


def np_slerp(a, b, g):
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    th = np.arccos(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
    return (np.sin((1 - g) * th) * a + np.sin(g * th) * b) / np.sin(th)


def test_slerp_and_norm_matching_math():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(2, 3, 4, 4)).astype(np.float32), rng.normal(size=(2, 3, 4, 4)).astype(np.float32)
    for g in (0.0, 0.3, 1.0):
        got = ds.slerp(jt.array(a), jt.array(b), g).numpy()
        for i in range(2):
            np.testing.assert_allclose(got[i].ravel(), np_slerp(a[i], b[i], g), rtol=1e-4, atol=1e-5)
    e1, e2 = np.zeros((1, 4), np.float32), np.zeros((1, 4), np.float32)
    e1[0, 0], e2[0, 1] = 2.0, 2.0  # orthogonal, equal norms: the midpoint keeps the norm
    mid = ds.slerp(jt.array(e1), jt.array(e2), 0.5).numpy()
    np.testing.assert_allclose(mid, [[2 ** 0.5, 2 ** 0.5, 0, 0]], atol=1e-5)
    matched = ds.match_norm(jt.array(b), jt.array(a)).numpy()
    np.testing.assert_allclose(np.linalg.norm(matched.reshape(2, -1), axis=1),
                               np.linalg.norm(a.reshape(2, -1), axis=1), rtol=1e-5)


@pytest.fixture(scope="module")
def setup(tiny_ref):
    rng = np.random.default_rng(1)
    return load_pipeline(tiny_ref / "sd2"), np.stack([_image(rng), _image(rng)]), _image(rng)


def test_gamma_zero_without_boost_is_the_style_reconstruction(setup):
    pipe, content, style = setup
    cfg = ds.DiffStyleConfig(gamma=0.0, t_boost=0, steps=10, start_step=3)
    got = ds.diffstyle(pipe, content, style, cfg)
    ctx = pipe.encode_prompt("")
    x_t = ddim_invert(pipe, _as_latents(pipe, style), ctx, 10, num_inversion_steps=3)[-1]
    want = pipe.decode_latents(ddim_sample(pipe, x_t, ctx, 10, 3))
    assert np.abs(got.astype(int) - want[0].astype(int)).max() <= 1  # both images: the style's trajectory
    assert got.shape == (2, 16, 16, 3)
    assert ds.DiffStyleConfig().gamma > 0  # and injection really changes it:
    changed = ds.diffstyle(pipe, content, style, ds.DiffStyleConfig(gamma=0.5, t_edit=0, t_boost=0, steps=10,
                                                                    start_step=3))
    assert np.abs(changed.astype(int) - got.astype(int)).mean() > 0.5


@pytest.mark.parametrize("kind", ["sd1", "sd2"])
def test_parity_with_pytorch_reference(setup, tiny_ref, tmp_path_factory, kind):
    _, content, style = setup
    pipe = load_pipeline(tiny_ref / kind)
    inputs = dict(content=content, style=style, gamma=CFG.gamma, t_edit=CFG.t_edit, t_boost=CFG.t_boost,
                  eta=CFG.eta, omega=CFG.omega, dt_lambda=CFG.dt_lambda, steps=CFG.steps,
                  start_step=CFG.start_step, seed=CFG.seed)
    key = content.tobytes() + style.tobytes() + f"{CFG!r} {kind}".encode()
    ref = reference_npz(REF, "diffstyle", key, inputs, tiny_ref / kind, tmp_path_factory)
    ctx = pipe.encode_prompt("")
    n = len(content)
    x_t = ddim_invert(pipe, _as_latents(pipe, style), ctx, CFG.steps, num_inversion_steps=CFG.start_step)[-1]
    np.testing.assert_allclose(x_t.numpy(), ref["x_T"], atol=1e-4)
    h = ds._record_content_h(pipe, _as_latents(pipe, content), jt.concat([ctx] * n), CFG)
    latents = ds._sample(pipe, jt.concat([x_t] * n), jt.concat([ctx] * n), h, CFG)
    # measured 1.9e-5 (sd1), 1.4e-5 (sd2) on values ~0.9
    np.testing.assert_allclose(latents.numpy(), ref["latents"], atol=1e-4)
    images = ds.diffstyle(pipe, content, style, CFG)
    assert np.abs(images.astype(int) - ref["images"].astype(int)).mean() <= 1.0


def test_bad_settings_are_one_line_errors(setup):
    pipe, content, style = setup
    for bad in (dict(gamma=1.5), dict(gamma=-0.1), dict(t_edit=1200), dict(t_boost=-1), dict(steps=0),
                dict(steps=10, start_step=11), dict(omega=2.0)):
        with pytest.raises(ConfigError) as e:
            ds.DiffStyleConfig(**bad)
        assert "\n" not in str(e.value)
    with pytest.raises(InputError, match="style"):
        ds.diffstyle(pipe, content, np.zeros((8, 8, 3), np.uint8), ds.DiffStyleConfig(steps=2))
    with pytest.raises(InputError):
        ds.diffstyle(pipe, content, None)


def test_cli_writes_images_and_skips_existing(setup, tiny_ref, tmp_path):
    from PIL import Image

    _, content, style = setup
    Image.fromarray(content[0]).save(tmp_path / "c.png")
    Image.fromarray(style).save(tmp_path / "s.png")
    args = ["--model", str(tiny_ref / "sd2"), "--content", str(tmp_path / "c.png"), "--style", str(tmp_path / "s.png"),
            "--out", str(tmp_path / "out"), "--size", "16", "--steps", "10", "--start-step", "2", "--device", "cpu"]
    assert ds.main(args) == 0
    out = tmp_path / "out" / "c-s.png"
    mtime = out.stat().st_mtime_ns
    assert ds.main(args) == 0 and out.stat().st_mtime_ns == mtime
    assert ds.main([*args[:-2], "--gamma", "3"]) == 2


def test_dt_lambda_scales_the_direction_only_from_t_950(setup):
    """20 steps start at t = 951 (dt_lambda applies to that step); 10 steps start at t = 901 (it never does).
    With dt_lambda 1 the sampler is plain DDIM."""
    pipe, _, _ = setup
    ctx = pipe.encode_prompt("")
    x = jt.array(np.random.default_rng(4).standard_normal((1, 4, 2, 2)).astype(np.float32))

    def run(steps: int, start: int, lam: float) -> np.ndarray:
        cfg = ds.DiffStyleConfig(gamma=0.0, t_boost=0, steps=steps, start_step=start, dt_lambda=lam)
        return ds._sample(pipe, x, ctx, {}, cfg).numpy()

    plain = run(20, 20, 1.0)
    # measured 1.7e-3 on values up to 2.5: the random tiny UNet amplifies float32 coefficient rounding from t=951
    np.testing.assert_allclose(plain, ddim_sample(pipe, x, ctx, 20, 20).numpy(), atol=5e-3)
    assert np.abs(run(20, 20, 0.5) - plain).max() > 0.5  # measured 1.07: the t = 951 direction term halved
    np.testing.assert_array_equal(run(10, 10, 0.5), run(10, 10, 1.0))
