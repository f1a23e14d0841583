"""StyleID on the tiny models: parity with the transcription of the official code (tests/reference/
styleid_official_ref.py, checker env) for both variants, what the old code got wrong, identities, errors.

Settings: 16x16 images (8x8 latents), 4-step schedules. The paper variant must invert to alpha-bar[999]; the
random tiny UNet is chaotic there (see test_inversion.py), so its parity bounds are measured amplifications of
float32 rounding, stated per test. The identity tests use the diffusers variant 3 steps deep into a 10-step
schedule (t <= 201), where the round trip is tame enough to show the method's logic.
"""

from pathlib import Path

import jittor as jt
import numpy as np
import pytest

from jstyle import load_pipeline
from jstyle.errors import ConfigError, InputError
from jstyle.methods import styleid
from jstyle.methods.inversion import ddim_invert, ddim_sample, make_scheduler
from jstyle.methods.styleid import (
    StyleIDConfig,
    adain,
    injected_labels,
    inversion_steps,
    invert_style,
    official_layers,
    resolve_layers,
    sampling_timesteps,
    stylize,
    stylize_latents,
)

from ..tolerance import EPS32, UINT8, assert_at_most, assert_close, f32_bound
from .conftest import reference_npz

REF = Path(__file__).resolve().parents[1] / "reference" / "styleid_official_ref.py"
CFG = StyleIDConfig(steps=10, start_step=3)  # diffusers variant, 3 steps deep (the identity tests)
PARITY_STEPS = {"diffusers": 4, "paper": 30}  # paper: injection needs i >= 50 - start_step, so N >= 26


def paper_noise(batch: int, seed: tuple = (22,)) -> np.ndarray:
    """The posterior noise jstyle's paper variant draws for 8x8 latents: the style's from default_rng(22)
    (seed_everything(22)), the contents' from default_rng((22, 1)) (stylize's default)."""
    return np.random.default_rng(seed).standard_normal((batch, 4, 8, 8)).astype(np.float32)


class SD:  # what make_scheduler reads of a pipeline: SD's scheduler config
    scheduler_config = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1,
                            set_alpha_to_one=False)


def _image(rng: np.random.Generator) -> np.ndarray:
    """A smooth colour gradient plus noise, uint8 [16, 16, 3]."""
    x = np.linspace(0, 1, 16)
    base = np.stack([np.outer(x, 1 - x), np.outer(1 - x, x), np.outer(x, x)], -1)
    image = base * 255 * rng.uniform(0.5, 1.5, (1, 1, 3)) + rng.normal(0, 20, (16, 16, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def setup(tiny_ref):
    rng = np.random.default_rng(0)
    content = np.stack([_image(rng), _image(rng)])
    return load_pipeline(tiny_ref / "sd1"), content, _image(rng)


def _latents(pipe, images):
    return pipe.encode_uint8(images)


def test_variant_defaults_are_the_official_ones():
    paper, diffusers = StyleIDConfig(variant="paper"), StyleIDConfig(variant="diffusers")
    # run_styleid.py::main: 50 steps, start_step 49, no AdaIN epsilon
    assert (paper.steps, paper.start_step, paper.adain_eps, paper.rounding) == (50, 49, 0.0, "trunc")
    # diffusers_implementation/config.py: 20 steps, all inverted and sampled, std + 1e-4
    assert (diffusers.steps, diffusers.start_step, diffusers.adain_eps, diffusers.rounding) == (20, 20, 1e-4, "round")
    assert StyleIDConfig().variant == "diffusers"  # SD 2.1, the challenge's base: the authors' diffusers code
    assert StyleIDConfig(variant="paper", steps=6).start_step == 5 and StyleIDConfig(steps=6).start_step == 6
    assert StyleIDConfig(variant="paper", steps=6, start_step=2).start_step == 2  # given explicitly: kept
    assert styleid.VARIANTS["paper"]["layers"] == (6, 7, 8, 9, 10, 11)
    assert styleid.VARIANTS["diffusers"]["layers"] == (7, 8, 9, 10, 11)


def test_official_label_lists():
    """docs/methods-sources.md's tables, on SD's schedule (the tiny models share it)."""
    sched = make_scheduler(SD, 50)
    acp = sched.alphas_cumprod
    paper = inversion_steps(StyleIDConfig(variant="paper"), sched)
    assert [t for t, _, _ in paper] == list(range(1, 1000, 20))  # 50 calls at the latent's own label
    assert paper[0][1] == acp[1] and paper[-1][2] == acp[999]  # clean latent = level 1; lands on alpha-bar[999]
    samp = sampling_timesteps(StyleIDConfig(variant="paper"), sched)
    assert [t for t, _, _ in samp] == list(range(961, 0, -20)) and samp[-1][2] == acp[0]
    diff = inversion_steps(StyleIDConfig(), make_scheduler(SD, 20))
    assert [t for t, _, _ in diff] == list(range(1, 1000, 50)) and diff[0][1] == acp[0] and diff[1][1] == acp[1]
    assert diff[-1][2] == acp[951]


def test_official_layers_map_to_the_tiny_unet(setup):
    unet = setup[0].unet  # two up-blocks, attention in up_blocks.1 only: official i -> i - 6
    assert official_layers(unet, (6, 7, 8, 9, 10, 11)) == tuple(f"up_blocks.1.attentions.{a}" for a in range(3))
    assert official_layers(unet, (7, 8, 9, 10, 11)) == official_layers(unet, (9, 10, 11))
    assert official_layers(unet, (10, 11)) == ("up_blocks.1.attentions.1", "up_blocks.1.attentions.2")
    names = resolve_layers(unet, None)
    assert names == [f"up_blocks.1.attentions.{i}.transformer_blocks.0.attn1" for i in range(3)]
    assert resolve_layers(unet, ("up_blocks.1.attentions.2",)) == names[2:]


@pytest.fixture(scope="module", params=[("sd1", "paper"), ("sd1", "diffusers"), ("sd2", "paper"),
                                        ("sd2", "diffusers")], ids=lambda p: "-".join(p))
def official(request, setup, tiny_ref, tmp_path_factory):
    """(kind, variant, the official reference's output at 4 steps on the module's images), cached."""
    (kind, variant), (_, content, style) = request.param, setup
    steps = PARITY_STEPS[variant]
    inputs = dict(variant=variant, content=content, style=style, steps=steps,
                  start_step=StyleIDConfig(variant=variant, steps=steps).start_step)
    if variant == "paper":
        inputs.update(style_noise=paper_noise(1), content_noise=paper_noise(len(content), (22, 1)))
    key = content.tobytes() + style.tobytes() + f"{kind} {variant} {steps}".encode()
    return kind, variant, reference_npz(REF, "styleid-official", key, inputs, tiny_ref / kind, tmp_path_factory)


# Parity bound: float32 rounding of the longest reduction (3x3 conv over 64 channels, 576 terms) on values
# |z| <= 3, per UNet call (N inversion + <= N sampling calls): diffusers 8 * 576 * eps32 * 3 = 1.6e-3, paper
# 60 calls: 1.2e-2. Jittor and torch sum in other orders. Measured latents: sd1 diffusers 2.6e-4, sd2 4.9e-5;
# paper (30 steps) sd1 4.1e-4, sd2 2.4e-5 (AMD EPYC, 2 cores).
PARITY_ATOL = {v: 2 * n * f32_bound(576, 3.0) for v, n in PARITY_STEPS.items()}


def test_matches_official_reference(setup, official, tiny_ref):
    (pipe, content, style), (kind, variant, ref) = setup, official
    pipe = pipe if kind == "sd1" else load_pipeline(tiny_ref / kind)  # sd2: v-prediction, upcast attention
    cfg = StyleIDConfig(variant=variant, steps=PARITY_STEPS[variant])
    features = invert_style(pipe, style, cfg)  # paper: the posterior sample from default_rng(22)
    # the style's inversion alone: N UNet calls of 576-term rounding, |z| <= 3
    assert_close(features.latent.numpy(), ref["z_s"], atol=PARITY_ATOL[variant] / 2, what=f"{kind} {variant} z_s")
    generator = np.random.default_rng((22, 1)) if variant == "paper" else None
    z = stylize_latents(pipe, pipe.encode_uint8(content, generator), features, cfg).numpy()
    assert_close(z, ref["latents"], atol=PARITY_ATOL[variant], what=f"{kind} {variant} latents")
    images = styleid.decode(pipe, jt.array(z), cfg)
    # a proof, not a noise estimate: < 1 level apart in float, so rounding or truncation flips by at most 1;
    # measured 1 (a flipped level) in every case
    assert_close(images, ref["images"], atol=UINT8, what=f"{kind} {variant} images")
    assert np.abs(z - _latents(pipe, content).numpy()).max() > 0.1  # the style did change the content


def test_paper_injects_only_where_feat_merge_has_features():
    """run_styleid.py::feat_merge keeps 50 entries and leaves i < 50 - start_step empty, whatever N: the defaults
    inject on all 49 sampled steps, N = 30 on its last 9, N < 26 on none; diffusers on every sampled step."""
    sched = make_scheduler(SD, 50)
    sampled = [t for t, _, _ in sampling_timesteps(StyleIDConfig(variant="paper"), sched)]
    assert sorted(injected_labels(StyleIDConfig(variant="paper"), sched)) == sorted(sampled) and len(sampled) == 49
    cfg = StyleIDConfig(variant="paper", steps=30)  # labels arange(30) * 33 + 1; loop steps 21..29 inject
    assert sorted(injected_labels(cfg, make_scheduler(SD, 30))) == [1 + 33 * k for k in range(9)]
    assert injected_labels(StyleIDConfig(variant="paper", steps=4), make_scheduler(SD, 4)) == set()
    assert len(injected_labels(StyleIDConfig(steps=4), make_scheduler(SD, 4))) == 4
    with pytest.raises(ConfigError, match="<= 50"):
        StyleIDConfig(variant="paper", steps=51)


def test_paper_variant_starts_at_alpha_bar_999(tiny_ref):
    """The old code (diffusers convention, steps - 1 steps deep) started the paper's sampling at alpha-bar[501]
    for 4 steps (alpha-bar[961] for 50); the paper's inversion lands on alpha-bar[999]. With the UNet's output
    zeroed (eps = 0) inversion only rescales: x_T = x0 sqrt(alpha-bar[999] / alpha-bar[1])."""
    pipe = load_pipeline(tiny_ref / "sd1")
    pipe.unet.conv_out.weight.assign(jt.zeros_like(pipe.unet.conv_out.weight))
    pipe.unet.conv_out.bias.assign(jt.zeros_like(pipe.unet.conv_out.bias))
    acp = make_scheduler(pipe, 4).alphas_cumprod
    x0 = pipe.encode_uint8(_image(np.random.default_rng(5)), np.random.default_rng(22))  # the paper's sample
    cfg = StyleIDConfig(variant="paper", steps=4, inject=False)
    z = invert_style(pipe, _image(np.random.default_rng(5)), cfg).latent.numpy()
    # 4 float32 rescalings of values |x0| <= 3
    assert_close(z, x0.numpy() * np.sqrt(acp[999] / acp[1]), atol=f32_bound(8, 3.0), what="x_T at alpha-bar[999]")
    old = np.sqrt(acp[501] / acp[0])  # where the old code's 3-of-4-step inversion ended
    assert abs(np.sqrt(acp[999] / acp[1]) / old - 1) > 0.1  # 0.0683 vs 0.41: not a rounding matter


@pytest.fixture(scope="module")
def plain(setup):
    """Plain DDIM inversion + regeneration of the first content image (10-step schedule, 3 steps deep)."""
    pipe, content, _ = setup
    emb = pipe.encode_prompt("")
    z_c = _latents(pipe, content[:1])
    return ddim_sample(pipe, ddim_invert(pipe, z_c, emb, 10, num_inversion_steps=3)[-1], emb, 10, 3).numpy()


def test_switches_off_is_plain_inversion_and_regeneration(setup, plain):
    pipe, content, style = setup
    cfg = StyleIDConfig(steps=10, start_step=3, adain=False, inject=False)
    out = stylize_latents(pipe, _latents(pipe, content[:1]), invert_style(pipe, style, cfg), cfg).numpy()
    # with adain and injection off, the same UNet steps on the same latents (another call order may fuse
    # kernels differently): float32 rounding of 576-term reductions on |z| <= 1.1, 6 steps
    assert_close(out, plain, atol=6 * f32_bound(576, 1.1), what="switched-off StyleID vs plain")
    # and the processors were put back
    assert all(type(p).__name__ == "AttnProcessor" for p in pipe.unet.attn_processors.values())


# "The content back" below means the plain inversion + regeneration of the content: on the random tiny sd1
# UNet the DDIM round trip itself is poor (max error 0.89 for latents of max 0.30 at 10 steps / start 3;
# the model is chaotic, see test_inversion.py), so that is the best any setting can return.


def test_self_injection_with_gamma_one_is_plain_reconstruction(setup, plain):
    pipe, content, _ = setup
    cfg = StyleIDConfig(steps=10, start_step=3, gamma=1.0, T=1.0)
    out = stylize_latents(pipe, _latents(pipe, content[:1]), invert_style(pipe, content[0], cfg), cfg).numpy()
    # Q, K, V recorded in the inversion (UNet on x_{t-1}) stand in for those of the sampling pass (on x_t),
    # the same approximation as the inversion's: measured 0.051 (0.014 with a 50-step schedule).
    # Not rounding but the method's one-step approximation: a deterministic 0.0513 that machines reproduce to
    # ~1e-5 (the parity bound above), so the bound's 0.029 margin is > 1000x the machine-to-machine spread;
    # a processor that stored the wrong step's Q/K/V measures > 0.14 (another style image's error below).
    assert_at_most(np.abs(out - plain).max(), 0.08, "gamma 1 self-injection vs plain")


def test_style_equal_to_content_gives_the_content_back(setup, plain):
    pipe, content, style = setup
    z_c = _latents(pipe, content[:1])
    same = stylize_latents(pipe, z_c, invert_style(pipe, content[0], CFG), CFG).numpy()
    other = stylize_latents(pipe, z_c, invert_style(pipe, style, CFG), CFG).numpy()
    err_same, err_other = np.abs(same - plain).max(), np.abs(other - plain).max()
    # the method's approximation, as above (deterministic to ~1e-5 between machines, margins > 0.03):
    # measured 0.0487 (gamma 0.75, T 1.5), 0.14 with another style image
    assert_at_most(err_same, 0.08, "style = content vs plain")
    assert_at_most(err_same, 0.5 * err_other, "same-image error vs another style's")


def test_batch_row_equals_one_image(setup):
    pipe, content, style = setup
    features = invert_style(pipe, style, CFG)
    z = stylize_latents(pipe, _latents(pipe, content), features, CFG).numpy()
    single = stylize_latents(pipe, _latents(pipe, content[1]), features, CFG).numpy()
    # The style inversion is reusable: one content image alone gives its row of the batch. A batch of 1 and a
    # batch of 2 block their GEMMs differently (oneDNN): 576-term float32 rounding on |z| <= 1.1, 6 steps, x3
    assert_close(single[0], z[1], atol=3 * f32_bound(576, 1.1), what="one image vs its batch row")


def test_adain_takes_the_style_statistics():
    rng = np.random.default_rng(1)
    c = jt.array(rng.standard_normal((2, 4, 8, 8)).astype(np.float32) * 3 + 1)
    s = jt.array(rng.standard_normal((1, 4, 8, 8)).astype(np.float32) * 0.5 - 2)
    out = adain(c, s).numpy()
    sn = s.numpy()
    for b in range(2):
        # means over 64 values of size ~3 in float32: 64 * eps32 * 3 = 2.3e-5 worst case
        assert_close(out[b].mean((1, 2)), sn[0].mean((1, 2)), atol=f32_bound(64, 3), what="AdaIN mean")
        # std: a sum of 64 squares, a sqrt and a division: relative 64 * eps32 * 2 = 1.5e-5 worst case
        assert_close(out[b].std((1, 2), ddof=1), sn[0].std((1, 2), ddof=1), rtol=2 * 64 * EPS32, what="AdaIN std")
    # the diffusers variant's std + 1e-4: the std shrinks by s_c / (s_c + 1e-4) (s_c ~ 3: 3.3e-5 relative)
    eps = adain(c, s, 1e-4).numpy()
    sc = c.numpy().std((2, 3), ddof=1)
    want = sn[0].std((1, 2), ddof=1) * sc / (sc + 1e-4)
    assert_close(eps.std((2, 3), ddof=1), want, rtol=2 * 64 * EPS32, what="AdaIN std with epsilon")


def test_bad_inputs(setup, tmp_path, capsys):
    pipe, content, style = setup
    for kwargs, match in [({"gamma": 1.5}, "gamma must be in"), ({"gamma": -0.1}, "gamma must be in"),
                          ({"T": 0}, "T must be > 0"), ({"start_step": 21}, "start_step must be in 1..20"),
                          ({"variant": "ldm"}, "variant 'ldm' unknown"), ({"steps": 0}, "steps must be in")]:
        with pytest.raises(ConfigError, match=match) as e:
            StyleIDConfig(**kwargs)
        assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="'up_blocks.7.attentions.0' has no self-attention") as e:
        stylize(pipe, content, style, StyleIDConfig(steps=10, start_step=3, layers=("up_blocks.7.attentions.0",)))
    assert "\n" not in str(e.value)
    with pytest.raises(InputError, match="needs a style image"):
        stylize(pipe, content, None, CFG)
    with pytest.raises(InputError, match="uint8"):
        stylize(pipe, content.astype(np.float32), style, CFG)
    with pytest.raises(ConfigError, match="another variant"):
        stylize(pipe, content, invert_style(pipe, style, CFG), StyleIDConfig(variant="paper", steps=10))
    # CLI: a missing style file is one line on stderr and exit status 2, before any model is loaded
    from PIL import Image

    Image.fromarray(content[0]).save(tmp_path / "c.png")
    code = styleid.main(["--model", str(tmp_path), "--content", str(tmp_path / "c.png"),
                         "--style", str(tmp_path / "missing.png"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "missing.png: image not found" in err
    code = styleid.main(["--model", str(tmp_path), "--content", str(tmp_path / "c.png"), "--style",
                         str(tmp_path / "c.png"), "--gamma", "2", "--out", str(tmp_path / "o")])
    assert code == 2 and "gamma must be in [0, 1]" in capsys.readouterr().err


def test_cli_end_to_end(setup, tiny_ref, tmp_path, capsys):
    from PIL import Image

    _, content, style = setup
    for name, image in [("c0.png", content[0]), ("c1.png", content[1]), ("s.png", style)]:
        Image.fromarray(image).save(tmp_path / name)
    argv = ["--model", str(tiny_ref / "sd1"), "--content", str(tmp_path / "c0.png"), str(tmp_path / "c1.png"),
            "--style", str(tmp_path / "s.png"), "--out", str(tmp_path / "out"), "--size", "16",
            "--variant", "paper", "--steps", "4", "--batch", "2"]
    assert styleid.main(argv) == 0
    outs = sorted((tmp_path / "out").iterdir())
    assert [p.name for p in outs] == ["c0-s.png", "c1-s.png"]
    assert np.asarray(Image.open(outs[0])).shape == (16, 16, 3)
    assert styleid.main(argv) == 0 and "nothing to do" in capsys.readouterr().out  # resumable
    assert styleid.main(["--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--variant {diffusers,paper}" in text and "the only official code for SD 2.x" in text
