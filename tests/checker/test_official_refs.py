"""The references transcribed from the official StyleID / DiffStyle / JStyleID code (tests/reference/
*_official_ref.py, jstyleid_ref.py) show the official behaviours that jstyle's methods are to match:
DiffStyle's omega 0 is full injection and calibration is off by default; its boosting noise falls only on
content_replace steps; StyleID's paper variant starts sampling from alpha-bar[999]; the diffusers variant
runs N inversion and N sampling steps. Runs in the checker env on the tiny diffusers folders of
tests/reference/make_tiny.py (built here if the jstyle tests have not cached them), and on stand-in models
where only the control flow matters.
"""

from __future__ import annotations

import copy
import hashlib
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler

from tests.tolerance import assert_at_most, assert_close, f32_bound

REF = Path(__file__).resolve().parents[1] / "reference"
if str(REF) not in sys.path:
    sys.path.insert(0, str(REF))

import diffstyle_official_ref as D  # noqa: E402
import jstyleid_ref as J  # noqa: E402
import styleid_official_ref as S  # noqa: E402

SD_SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                    set_alpha_to_one=False, steps_offset=1)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """make_tiny.py's folder, at the path tests/jstyle/conftest.py caches it under (same key)."""
    import make_tiny

    key = hashlib.sha256((REF / "make_tiny.py").read_bytes()).hexdigest()[:12]
    home = os.environ.get("JSTYLE_HOME")
    out = (Path(home) / "test-cache" if home else tmp_path_factory.getbasetemp()) / f"tiny-{key}"
    if not (out / "DONE").exists():
        make_tiny.main(out)
    return out


@pytest.fixture(scope="module")
def sd1(tiny):
    torch.set_grad_enabled(False)
    return S.load(str(tiny / "sd1"))


@pytest.fixture(scope="module")
def sd2(tiny):
    torch.set_grad_enabled(False)
    return S.load(str(tiny / "sd2"))


def _image(seed: int) -> np.ndarray:
    x = np.linspace(0, 1, 16)
    base = np.stack([np.outer(x, 1 - x), np.outer(1 - x, x), np.outer(x, x)], -1) * 255
    return np.clip(base + np.random.default_rng(seed).normal(0, 20, (16, 16, 3)), 0, 255).astype(np.uint8)


class ZeroEps:
    """A stand-in model with eps = 0 everywhere: the DDIM maps become pure rescalings of the latent."""

    def __init__(self):
        self.calls = 0

    def eps(self, x, t, a=None):  # styleid_official_ref.Model.eps / .raw (epsilon-prediction)
        self.calls += 1
        return torch.zeros_like(x)

    raw = eps

    def __call__(self, x, t, index=None, t_edit=400, hs_coeff=(1.0,), delta_h=None):  # diffstyle's models
        self.calls += 1 + (index is not None and t >= t_edit)
        return torch.zeros_like(x), torch.zeros_like(x), delta_h, torch.ones(1, 2, 2, 2)


# ------------------------------------------------------------------------------------------------ StyleID


def test_paper_variant_inverts_to_999_at_own_labels():
    """50 steps, start_step 49: inversion calls the UNet at 1, 21, ..., 981 and lands on alpha-bar[999];
    sampling runs 961 ... 1 (49 steps), the first from that latent. jstyle's today: 49 steps to 961."""
    acp = DDIMScheduler(**SD_SCHEDULER).alphas_cumprod
    log, state = [], {"t": None}
    x0 = torch.ones(1, 4, 2, 2)
    z, z_enc = S.encode_ddim(ZeroEps(), x0, 50, 981, acp, state, log)
    assert [t for t, _ in log] == list(range(1, 1000, 20))
    assert_close(log[-1][1], acp[999], what="alpha-bar the inversion ends on")
    # eps = 0: each step multiplies by sqrt(a_next / a_t); the clean latent counts as level 1
    assert_close(z, x0 * (acp[999] / acp[1]).sqrt(), rtol=f32_bound(50, 1.0), what="z at alpha-bar[999]")
    assert z_enc[981] is z  # feat_maps[0]['z_enc'], the start of sampling
    sample_log = []
    S.ddim_sampling(ZeroEps(), z, 50, 49, acp, {"t": None}, False, sample_log)
    assert sample_log == list(range(961, 0, -20))
    # sqrt(abar) of the start latent: official 0.068 vs jstyle's 0.085 (alpha-bar[961]), 25% more content
    assert_close(float(acp[999].sqrt()), 0.0683, atol=1e-4, what="sqrt alpha-bar[999]")
    assert_close(float(acp[961].sqrt()), 0.0853, atol=1e-4, what="sqrt alpha-bar[961]")


def test_diffusers_variant_runs_n_inversion_and_n_sampling_steps():
    """20 steps: inversion 1, 51, ..., 951 (the latent at level t - 50, the UNet at label t), sampling
    951 ... 1: 20 and 20 UNet calls."""
    sched = DDIMScheduler(**SD_SCHEDULER)
    sched.set_timesteps(20)
    model, log, sample_log = ZeroEps(), [], []
    x0 = torch.ones(1, 4, 2, 2)
    z = S.invert_process(model, sched, x0, {"t": None}, log)
    S.reverse_process(model, sched, z, {"t": None}, sample_log)
    assert [t for t, _ in log] == list(range(1, 1000, 50)) and sample_log == list(range(951, 0, -50))
    assert model.calls == 40
    acp = sched.alphas_cumprod
    assert_close(z, x0 * (acp[951] / acp[0]).sqrt(), rtol=f32_bound(20, 1.0), what="z at alpha-bar[951]")


@pytest.mark.parametrize("variant", ["paper", "diffusers"])
def test_variants_on_the_tiny_model(sd1, variant):
    """Real UNet, 4 steps: the label lists, the start latent's level (UNet output zeroed: eps = 0, so the
    inversion only rescales), the variant's AdaIN, and that injection changes the result."""
    content, style = _image(1)[None], _image(2)
    out = S.stylize(sd1, variant, content, style, steps=4, start_step=3)
    acp = DDIMScheduler.from_config(sd1.scheduler.config).alphas_cumprod
    if variant == "paper":
        assert out["inv_labels"].tolist() == [1, 251, 501, 751] and out["sample_labels"].tolist() == [501, 251, 1]
        level, first = acp[999], acp[1]
        mc, sc = out["z_c"].mean((2, 3), keepdims=True), out["z_c"].std((2, 3), ddof=1, keepdims=True)
    else:
        assert out["inv_labels"].tolist() == [1, 251, 501, 751]
        assert out["sample_labels"].tolist() == [751, 501, 251, 1]
        level, first = acp[751], acp[0]
        mc, sc = out["z_c"].mean((2, 3), keepdims=True), out["z_c"].std((2, 3), ddof=1, keepdims=True) + 1e-4
    assert_close(out["inv_alpha_next"][-1], level, what="alpha-bar of the inverted latent")
    ms, ss = out["z_s"].mean((2, 3), keepdims=True), out["z_s"].std((2, 3), ddof=1, keepdims=True)
    # AdaIN of 64 values per channel, |z| ~ 3: float32 rounding of a mean, a std and three ops
    assert_close(out["z_T"], ss * (out["z_c"] - mc) / sc + ms, atol=f32_bound(4 * 64, 3.0), what="AdaIN")
    plain = S.stylize(sd1, variant, content, style, steps=4, start_step=3, inject=False)
    if variant == "paper":  # feat_merge's 50 entries are empty below 50 - start_step = 47: nothing injected at N = 4
        assert np.array_equal(out["latents"], plain["latents"])
        out = S.stylize(sd1, variant, content, style, steps=30, start_step=29)  # loop steps 21..29 inject
        plain = S.stylize(sd1, variant, content, style, steps=30, start_step=29, inject=False)
    # guard, not a tolerance: injection moves the tiny model's latents by ~0.1-0.5
    assert np.abs(out["latents"] - plain["latents"]).max() > 1e-2
    zeroed = copy.deepcopy(sd1)
    zeroed.unet.conv_out.weight.zero_()
    zeroed.unet.conv_out.bias.zero_()
    z = S.stylize(zeroed, variant, content, style, steps=4, start_step=3, adain=False, inject=False)
    x0 = S.encode(zeroed.vae, content)
    assert_close(z["z_c"], x0 * (level / first).sqrt(), rtol=f32_bound(8, 1.0), atol=f32_bound(8, 1e-3),
                 what="start latent = x0 * sqrt(alpha-bar[level] / alpha-bar[first])")


# ---------------------------------------------------------------------------------------------- DiffStyle


def _step_inputs(pipe):
    model = D.SDModel(pipe.unet, pipe.encode_prompt("", "cpu", 1, False)[0], pipe.scheduler)
    g = torch.Generator().manual_seed(0)
    x, x_c = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 4, 8, 8, generator=g)
    _, _, _, h_c = model(x_c, 600)  # a content h at the same label
    return model, x, h_c


def test_diffstyle_omega_zero_is_full_injection_and_calibration_off(sd1):
    """omega 0 (main.py's default): x0 from the injected eps, direction from the plain one, 2 UNet calls;
    omega > 0 re-runs the UNet on the shifted latent (3 calls). jstyle's omega 0 is the plain step."""
    model, x, h_c = _step_inputs(sd1)
    b = sd1.scheduler.betas
    at, at_next = (1 - b).cumprod(0)[600], (1 - b).cumprod(0)[580]
    try:
        et, et_mod, _, _ = model(x, 600, index=0, t_edit=400, hs_coeff=[1 - 0.4], delta_h=h_c)
        calls = model.calls
        kw = dict(models=model, b=b, randn=None, index=0, t_edit=400, hs_coeff=[1 - 0.4], delta_h=h_c)
        full, _, _, _ = D.denoising_step(x, 600, 580, omega=0.0, **kw)
        assert model.calls - calls == 2
        want = at_next.sqrt() * (x - (1 - at).sqrt() * et_mod) / at.sqrt() + (1 - at_next).sqrt() * et
        assert_close(full, want, atol=f32_bound(4, 10.0), what="official omega 0 step")  # |x0| <= ~10
        jstyle_omega0 = at_next.sqrt() * (x - (1 - at).sqrt() * et) / at.sqrt() + (1 - at_next).sqrt() * et
        # guard, not a tolerance: the injected h moves x_prev by ~0.1 on the tiny model
        assert (full - jstyle_omega0).abs().max() > 1e-2
        calls = model.calls
        calibrated, _, _, _ = D.denoising_step(x, 600, 580, omega=0.5, **kw)
        assert model.calls - calls == 3 and (calibrated - full).abs().max() > 1e-3
    finally:
        model.handle.remove()


def _noise_variance(log, acp) -> float:
    """sum sigma^2 / alpha-bar[t_next] over the noisy steps: the added noise in x0 units."""
    total = 0.0
    for t, t_next, eta in log:
        a, a_next = acp[t], (1.0 if t_next < 0 else acp[t_next])
        total += eta**2 * (1 - a / a_next) * (1 - a_next) / (1 - a) / a_next
    return float(total)


def test_diffstyle_boosts_only_on_replace_steps():
    """in-domain recipe (1000 generation steps, 50 replace steps, t_noise 200): noise on the 10 replace
    steps at t <= 200 only, summed sigma^2/alpha-bar 0.0144 on SD's schedule; jstyle's rule (every step of
    its 50-step schedule at t <= t_boost) gives 0.196, 13.6 times more."""
    sched = DDIMScheduler(**SD_SCHEDULER)
    acp = sched.alphas_cumprod.double()
    args = D.RECIPES["in-domain"]
    model, draws = ZeroEps(), []
    seq_inv = D.seq_of(args["n_inv_step"], args["t_0"])
    pair = [None, 0, torch.ones(1, 4, 2, 2), {t: torch.ones(1, 2, 2, 2) for t in seq_inv[:-1]}]
    log: list = []
    D.diff_style(model, sched.betas, pair, pair, args, lambda shape: draws.append(shape) or torch.zeros(shape), log)
    noisy = [(t, t_next, eta) for t, t_next, _, eta, _, _ in log if eta]
    assert [t for t, _, _ in noisy] == [183, 163, 142, 122, 101, 81, 61, 40, 20, 0]
    assert all(r for t, _, r, eta, _, _ in log if eta) and len(draws) == 10
    assert sum(r for _, _, r, _, _, _ in log) == 50 and len(log) == 1000
    # injected steps: the replace steps at t >= t_edit = 400 (2 calls each), the other 950 steps plain
    assert model.calls == 1000 + sum(1 for t, _, r, _, _, _ in log if r and t >= 400)
    official = _noise_variance(noisy, acp)
    sched.set_timesteps(50)
    # jstyle's t = 1 step goes to final_alpha_cumprod = alpha-bar[0] (set_alpha_to_one False), hence max(., 0)
    jstyle = _noise_variance([(t, max(t - 20, 0), 1.0) for t in sched.timesteps.tolist() if t <= 200], acp)
    assert_close(official, 0.0144, atol=1e-4, what="official summed sigma^2/alpha-bar")
    assert_close(jstyle, 0.1962, atol=1e-4, what="jstyle's summed sigma^2/alpha-bar")
    assert_at_most(12.0 - jstyle / official, 0.0, what="jstyle adds >= 12x the official noise")


def test_diffstyle_tiny_model_end_to_end(sd2):
    """The whole official loop on the tiny sd2 (v-prediction) model: 20 generation steps with 5 replace
    labels -> only 999 and 0 are on both lists (int(linspace) membership), so only they inject/boost."""
    out = D.transfer(sd2, _image(3), _image(4), "in-domain", n_gen_step=20, n_inv_step=10, content_replace_step=5)
    assert out["t"].tolist()[:2] == [999, 946] and out["t_next"].tolist()[-1] == -1
    assert np.flatnonzero(out["replace"]).tolist() == [0, 19] and out["eta"].tolist() == [0] * 19 + [1]
    assert out["unet_calls"].tolist() == [2] + [1] * 19
    assert out["closest_t"].tolist()[0] == 888  # h keys: the inversion's labels 0, 111, ..., 888
    assert np.isfinite(out["latents"]).all() and out["images"].shape == (1, 16, 16, 3)


# ---------------------------------------------------------------------------------------------- JStyleID


# What jstyle's seeded rule must return for style "00", seed 0, 10 references (numpy's Generator.integers on
# PCG64; NEP 19 lets numpy change Generator streams in a release that says so: re-pin then, on both sides).
PINNED_PICKS = [1, 0, 7, 2]


def test_jstyleid_reference_rule_is_seeded_per_prompt():
    """default_rng([seed, crc32(style), crc32(prompt)]).integers(0, n): pinned values, order-free."""
    picks = [J.pick_reference(10, 0, "00", p) for p in ("Bear", "Cat", "Dolphin", "Zebra")]
    assert picks == [J.pick_reference(10, 0, "00", p) for p in ("Bear", "Cat", "Dolphin", "Zebra")]
    assert picks == PINNED_PICKS
    assert len({J.pick_reference(10, 0, "00", f"obj{i}") for i in range(40)}) >= 8  # spreads over the images
    seeds = [[J.pick_reference(10, seed, "00", f"obj{i}") for i in range(10)] for seed in (0, 1)]
    assert seeds[0] != seeds[1]  # the seed matters
    assert J.pick_reference(10, 0, "01", "Bear") != J.pick_reference(10, 0, "00", "Bear") or \
        [J.pick_reference(10, 0, "01", f"obj{i}") for i in range(10)] != seeds[0]  # so does the style


def test_jstyleid_end_to_end(tiny, sd2, tmp_path):
    """run_all.py's two stages on the tiny sd2 model (no LoRA, 2 + 2 steps): shapes, the chosen reference,
    and that stage 2 is the diffusers StyleID variant of the content with that reference."""
    rng = np.random.default_rng(0)
    refs = np.stack([_image(10 + i) for i in range(3)])
    inp = dict(prompts=np.array(["Bear", "Cat"]), latents=rng.standard_normal((2, 4, 8, 8)).astype(np.float32),
               references=refs, style=np.array("00"), lora=np.array(""), steps=np.array(2),
               styleid_steps=np.array(2))
    np.savez(tmp_path / "in.npz", **inp)
    J.main(str(tiny / "sd2"), str(tmp_path / "in.npz"), str(tmp_path / "out.npz"))
    out = dict(np.load(tmp_path / "out.npz"))
    assert out["contents"].shape == out["images"].shape == (2, 16, 16, 3) and out["images"].dtype == np.uint8
    assert out["chosen"].tolist() == [J.pick_reference(3, 0, "00", p) for p in ("Bear", "Cat")]
    again = S.stylize(sd2, "diffusers", out["contents"][:1], refs[out["chosen"][0]], steps=2)
    assert_close(again["images"][0], out["images"][0], atol=0.0, what="stage 2 = StyleID diffusers variant")
