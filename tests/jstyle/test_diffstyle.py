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

from ..tolerance import UINT8, assert_at_most, assert_close, f32_bound
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
            # float32 vs numpy float64: a 48-term dot product, an arccos and sines (~48 eps32 relative)
            assert_close(got[i].ravel(), np_slerp(a[i], b[i], g), rtol=1e-4, atol=1e-5)
    e1, e2 = np.zeros((1, 4), np.float32), np.zeros((1, 4), np.float32)
    e1[0, 0], e2[0, 1] = 2.0, 2.0  # orthogonal, equal norms: the midpoint keeps the norm
    mid = ds.slerp(jt.array(e1), jt.array(e2), 0.5).numpy()
    assert_close(mid, [[2 ** 0.5, 2 ** 0.5, 0, 0]], atol=1e-5)  # sin/arccos of exact values: ~4 eps32; measured 2.4e-8
    matched = ds.match_norm(jt.array(b), jt.array(a)).numpy()
    # a 48-term sum of squares, a sqrt and a rescale in float32: 48 eps32 relative worst case; measured 4.8e-7
    assert_close(np.linalg.norm(matched.reshape(2, -1), axis=1),
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
    x_t = ddim_invert(pipe, pipe.encode_uint8(style), ctx, 10, num_inversion_steps=3)[-1]
    want = pipe.decode_latents(ddim_sample(pipe, x_t, ctx, 10, 3))
    assert_close(got, want[0], atol=UINT8, what="both images: the style's trajectory")  # uint8 rounding
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
    x_t = ddim_invert(pipe, pipe.encode_uint8(style), ctx, CFG.steps, num_inversion_steps=CFG.start_step)[-1]
    # float32 rounding of 1152-term reductions (up-block convs) on values ~1, over the inversion's steps
    assert_close(x_t.numpy(), ref["x_T"], atol=CFG.start_step * f32_bound(1152, 1.0), what="x_T")
    h = ds._record_content_h(pipe, pipe.encode_uint8(content), jt.concat([ctx] * n), CFG)
    latents = ds._sample(pipe, jt.concat([x_t] * n), jt.concat([ctx] * n), h, CFG)
    # the same model of rounding over the inversion and the sampling: measured 1.6e-5 (sd1), 5.4e-6 (sd2)
    assert_close(latents.numpy(), ref["latents"], atol=2 * CFG.start_step * f32_bound(1152, 1.0), what="latents")
    images = ds.diffstyle(pipe, content, style, CFG)
    # uint8 outputs: float32 differences of ~1e-5 can flip a rounding: mean <= 1 grey level (the spec's rule)
    assert_at_most(np.abs(images.astype(int) - ref["images"].astype(int)).mean(), UINT8, "mean grey levels")


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
    # Another code path for the same steps: float32 coefficient rounding (~1e-7 relative) amplified over 20 steps
    # by the random tiny UNet from t = 951: measured 1.7e-3 (values up to 2.5); bound 12x that, still 50x
    # below what a misapplied step costs (1.07, next line)
    assert_close(plain, ddim_sample(pipe, x, ctx, 20, 20).numpy(), atol=2e-2)
    assert np.abs(run(20, 20, 0.5) - plain).max() > 0.5  # measured 1.07: the t = 951 direction term halved
    np.testing.assert_array_equal(run(10, 10, 0.5), run(10, 10, 1.0))
