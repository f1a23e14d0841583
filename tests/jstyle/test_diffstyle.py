"""DiffStyle on the tiny models: slerp math, parity with the transcription of the official code
(tests/reference/diffstyle_official_ref.py, checker env) for both recipes with calibration off and on, what the
old code got wrong (omega 0 was no injection; boosting on every step), identities, errors.

Settings: 16x16 images, 5 generation steps (labels 0, 249, 499, 749, 999) with content_replace_step 5 so every
step is a replace step, t_edit 400 (999, 749, 499 inject). The official inversion ends at alpha-bar[999],
where the random tiny UNet is chaotic: parity bounds are measured amplifications of float32 rounding.
"""

from pathlib import Path

import jittor as jt
import numpy as np
import pytest

from jstyle import load_pipeline
from jstyle.errors import ConfigError, InputError
from jstyle.methods import diffstyle as ds
from jstyle.methods.inversion import make_scheduler, sample_along

from ..tolerance import UINT8, assert_close, f32_bound
from .conftest import reference_npz
from .test_styleid import _image

REF = Path(__file__).resolve().parents[1] / "reference" / "diffstyle_official_ref.py"
SMALL = dict(steps=5, content_replace_step=5, seed=3)
CASES = {  # name: (recipe, jstyle overrides); the reference gets the same under main.py's names
    "artistic": ("artistic", dict(inv_steps=5)),
    "artistic-omega": ("artistic", dict(inv_steps=5, omega=0.5)),
    "in-domain": ("in-domain", dict(inv_steps=6, t_boost=300, dt_lambda=0.9985)),  # + the #CelebA_HQ dt_lambda
    "in-domain-omega": ("in-domain", dict(inv_steps=6, t_boost=300, omega=0.5)),
}
OFFICIAL_NAMES = dict(steps="n_gen_step", inv_steps="n_inv_step", t_boost="t_noise", gamma="hs_coeff")


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


def test_recipes_and_schedules_are_the_official_ones():
    art, dom = ds.DiffStyleConfig(), ds.DiffStyleConfig(recipe="in-domain")
    # README: artistic references hs_coeff 0.4, t_noise 0, dt_lambda 1, 1000/1000 steps
    assert (art.recipe, art.gamma, art.t_boost, art.dt_lambda, art.steps, art.inv_steps) == \
        ("artistic", 0.4, 0, 1.0, 1000, 1000)
    # README "#AFHQ": hs_coeff 0.3, t_noise 200, dt_lambda main.py's 1.0, 1000 from 50
    assert (dom.gamma, dom.t_boost, dom.dt_lambda, dom.steps, dom.inv_steps) == (0.3, 200, 1.0, 1000, 50)
    # main.py: omega 0 (calibration off), t_edit 400, dt_end 950, content_replace_step 50, t_0 999
    assert (art.omega, art.t_edit, art.dt_end, art.content_replace_step, art.t_0) == (0.0, 400, 950, 50, 999)
    assert ds.DiffStyleConfig(steps=7).inv_steps == 7  # artistic: inverted as many steps as generated
    assert ds.DiffStyleConfig(recipe="in-domain", steps=7).inv_steps == 50
    assert ds.seq_of(4) == [0, 333, 666, 999]
    # docs' table, n = 4: only 0 and 999 are on both lists
    assert ds.replace_labels(ds.DiffStyleConfig(steps=4)) & set(ds.seq_of(4)) == {0, 999}
    seq50 = ds.seq_of(50)
    assert seq50[:6] == [0, 20, 40, 61, 81, 101] and seq50[-3:] == [958, 978, 999]
    # 1000 steps, replace 50: the replace labels do not depend on --steps (the old code injected on every step)
    assert ds.replace_labels(ds.DiffStyleConfig()) == set(seq50) == ds.replace_labels(ds.DiffStyleConfig(steps=500))
    # 20 steps, replace 50: of the labels >= t_edit 400 only 999 is on both lists; replace 0: all 12 of them
    assert ds.injecting_labels(ds.DiffStyleConfig(steps=20)) == [999]
    assert ds.injecting_labels(ds.DiffStyleConfig(steps=20, content_replace_step=0)) == \
        [999, 946, 893, 841, 788, 736, 683, 630, 578, 525, 473, 420]
    assert ds.injecting_labels(ds.DiffStyleConfig(steps=20, content_replace_step=0, gamma=0.0)) == []


class _Stub:  # what _DiffStyleStep reads of a pipeline
    scheduler_config = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1,
                            set_alpha_to_one=False)


def test_omega_zero_is_full_injection_and_boosting_only_on_replace_steps():
    """The old code's omega 0 was the plain step (no injection) and it boosted on every step at t <= t_boost.
    Official: omega 0 takes x0 from the injected eps (direction from the plain one); noise only on replace
    steps at t <= t_noise."""
    rng = np.random.default_rng(0)
    x, e_inj, e = (jt.array(rng.standard_normal((1, 4, 2, 2)).astype(np.float32)) for _ in range(3))
    cfg = ds.DiffStyleConfig(steps=10, t_boost=200, omega=0.0)  # labels 0, 111, ..., 999; replace: 0 and 999
    step = ds._DiffStyleStep(_Stub(), cfg, 1, rerun=None)
    acp = make_scheduler(_Stub(), 1).alphas_cumprod
    a, a_next = acp[999], acp[888]
    got = step.step(jt.concat([e_inj, e]), 999, x).prev_sample.numpy()
    x0_inj = (x.numpy() - np.sqrt(1 - a) * e_inj.numpy()) / np.sqrt(a)
    want = np.sqrt(a_next) * x0_inj + np.sqrt(1 - a_next) * e.numpy()
    # a handful of float32 operations on values ~ |x0| <= 100 (sqrt(a) = 0.068): 8 eps32 * 100
    assert_close(got, want, atol=f32_bound(8, 100.0), what="omega 0 = x0 from the injected eps")
    old = np.sqrt(a_next) * (x.numpy() - np.sqrt(1 - a) * e.numpy()) / np.sqrt(a) + np.sqrt(1 - a_next) * e.numpy()
    assert np.abs(got - old).max() > 1.0  # the old omega 0 (the plain step) is another result
    state = step.rng.bit_generator.state
    step.step(e, 111, x)  # t = 111 <= t_boost but not a replace step: plain eta-0 DDIM, no noise drawn
    assert step.rng.bit_generator.state == state
    step.step(e, 0, x)  # t = 0: a replace step at t <= t_boost: eta 1, one draw (as the official randn_like)
    assert step.rng.bit_generator.state != state


@pytest.fixture(scope="module")
def setup(tiny_ref):
    rng = np.random.default_rng(1)
    return load_pipeline(tiny_ref / "sd2"), np.stack([_image(rng), _image(rng)]), _image(rng)


def _latents(pipe, content: np.ndarray, style: np.ndarray, cfg: ds.DiffStyleConfig) -> tuple[np.ndarray, np.ndarray]:
    ctx = pipe.encode_prompt("")
    x_t, _ = ds.invert(pipe, pipe.encode_uint8(style), ctx, cfg)
    _, h = ds.invert(pipe, pipe.encode_uint8(content), ctx, cfg)
    return x_t.numpy(), ds.generate(pipe, x_t, ctx, h, cfg).numpy()


@pytest.mark.parametrize("kind,case", [("sd2", c) for c in CASES] + [("sd1", "artistic"), ("sd1", "in-domain-omega")])
def test_matches_official_reference(setup, tiny_ref, tmp_path_factory, kind, case):
    _, content, style = setup
    pipe = setup[0] if kind == "sd2" else load_pipeline(tiny_ref / kind)
    recipe, over = CASES[case]
    cfg = ds.DiffStyleConfig(recipe=recipe, **SMALL, **over)
    official = {OFFICIAL_NAMES.get(k, k): v for k, v in {**SMALL, **over}.items()}
    inputs = dict(content=content[0], style=style, recipe=recipe, **official)
    key = content[0].tobytes() + style.tobytes() + f"{kind} {inputs}".encode()
    ref = reference_npz(REF, "diffstyle-official", key, inputs, tiny_ref / kind, tmp_path_factory)
    assert ref["replace"].tolist() == [1] * 5 and ref["t"].tolist() == [999, 749, 499, 249, 0]
    x_t, z = _latents(pipe, content[:1], style, cfg)
    # float32 rounding of 1152-term reductions (up-block convs) on values ~1, per inversion step (4-5 of them):
    # 5 * 1.4e-4 = 6.9e-4; measured 7.3e-5 at most (sd1 in-domain-omega)
    assert_close(x_t, ref["x_T"], atol=cfg.inv_steps * f32_bound(1152, 1.0), what=f"{kind} {case} x_T")
    calls = int(ref["unet_calls"].sum())  # the generation's UNet calls (2 per injected step, 3 calibrated)
    # the same model over both inversions and the generation's calls, x3 for the tiny UNet's amplification near
    # t = 999 (its round trip is chaotic there, test_inversion.py): sd1 artistic 18 calls -> 7.4e-3; measured
    # 1.8e-3 at most (sd1 artistic), the others <= 1e-4
    bound = 3 * (2 * cfg.inv_steps + calls) * f32_bound(1152, 1.0)
    assert_close(z, ref["latents"], atol=bound, what=f"{kind} {case} latents")
    images = pipe.decode_latents(jt.array(z))
    # a proof, not a noise estimate: < 1 level apart in float, so rounding flips by at most 1
    assert_close(images, ref["images"], atol=UINT8, what=f"{kind} {case} images")


def test_calibration_changes_the_result_and_gamma_zero_is_the_style_trajectory(setup):
    pipe, content, style = setup
    cfg = ds.DiffStyleConfig(**SMALL, inv_steps=5)
    _, off = _latents(pipe, content[:1], style, cfg)
    _, on = _latents(pipe, content[:1], style, ds.DiffStyleConfig(**SMALL, inv_steps=5, omega=0.5))
    assert np.abs(on - off).max() > 1e-2  # guard, not a tolerance: the calibration moves the latents by ~0.1
    g0 = ds.DiffStyleConfig(**SMALL, inv_steps=5, gamma=0.0)  # artistic: no boosting, dt_lambda 1
    ctx = pipe.encode_prompt("")
    x_t, _ = ds.invert(pipe, pipe.encode_uint8(style), ctx, g0)
    _, got = _latents(pipe, content[:1], style, g0)
    acp = make_scheduler(pipe, 1).alphas_cumprod
    seq = ds.seq_of(5)[::-1]
    plain = sample_along(pipe, x_t, ctx, [(t, acp[t], acp[n] if n >= 0 else np.float32(1))
                                          for t, n in zip(seq, seq[1:] + [-1])]).numpy()
    # the same UNet calls and DDIM steps through two code paths: 5 steps of 1152-term float32 rounding
    assert_close(got, plain, atol=5 * f32_bound(1152, 1.0), what="gamma 0 = the style's plain trajectory")
    assert np.abs(got - off).max() > 1e-2  # and injection really changes it


def test_dt_lambda_only_on_replace_steps_from_dt_end(setup):
    """dt_lambda scales the direction term only on replace steps with t >= dt_end (the old code: every step
    t >= 950): 10 steps start at 999 (a replace label); with replace labels from a 4-step schedule
    (0, 333, 666, 999) it applies at 999, and with dt_end 1000 never."""
    pipe = setup[0]
    ctx = pipe.encode_prompt("")
    x = jt.array(np.random.default_rng(4).standard_normal((1, 4, 2, 2)).astype(np.float32))

    def run(lam: float, dt_end: int = 950) -> np.ndarray:
        cfg = ds.DiffStyleConfig(gamma=0.0, steps=10, content_replace_step=4, dt_lambda=lam, dt_end=dt_end)
        return ds.generate(pipe, x, ctx, {0: x}, cfg).numpy()

    plain = run(1.0)
    assert np.abs(run(0.5) - plain).max() > 0.1  # the t = 999 direction term halved
    np.testing.assert_array_equal(run(0.5, dt_end=1000), plain)  # no step reaches dt_end: the same operations


def test_bad_settings_are_one_line_errors(setup):
    pipe, content, style = setup
    for bad in (dict(gamma=1.5), dict(gamma=-0.1), dict(t_edit=1200), dict(t_boost=-1), dict(steps=0),
                dict(inv_steps=1), dict(omega=-1.0), dict(recipe="celeba"), dict(content_replace_step=-2)):
        with pytest.raises(ConfigError) as e:
            ds.DiffStyleConfig(**bad)
        assert "\n" not in str(e.value)
    with pytest.raises(InputError, match="style"):
        ds.diffstyle(pipe, content, np.zeros((8, 8, 3), np.uint8), ds.DiffStyleConfig(steps=2, gamma=0.0))
    # 2 steps (0, 999) inject only at 999: a warning that names the fix, then the shape error
    with pytest.warns(UserWarning, match=r"on 1 of 2 steps .* content_replace_step 0"), pytest.raises(InputError):
        ds.diffstyle(pipe, content, np.zeros((8, 8, 3), np.uint8), ds.DiffStyleConfig(steps=2))
    with pytest.raises(InputError):
        ds.diffstyle(pipe, content, None)


def test_cli_writes_images_and_skips_existing(setup, tiny_ref, tmp_path, capsys):
    from PIL import Image

    _, content, style = setup
    Image.fromarray(content[0]).save(tmp_path / "c.png")
    Image.fromarray(style).save(tmp_path / "s.png")
    args = ["--model", str(tiny_ref / "sd2"), "--content", str(tmp_path / "c.png"), "--style", str(tmp_path / "s.png"),
            "--out", str(tmp_path / "out"), "--size", "16", "--recipe", "in-domain", "--steps", "4", "--inv-steps",
            "4", "--content-replace-step", "0", "--device", "cpu"]
    assert ds.main(args) == 0
    out = tmp_path / "out" / "c-s.png"
    mtime = out.stat().st_mtime_ns
    assert ds.main(args) == 0 and out.stat().st_mtime_ns == mtime
    assert ds.main([*args[:-2], "--gamma", "3"]) == 2
    capsys.readouterr()
    assert ds.main(["--help"]) == 0
    assert "--recipe {artistic,in-domain}" in " ".join(capsys.readouterr().out.split())
