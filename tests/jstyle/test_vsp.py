"""Visual Style Prompting on the tiny models: parity with the transcription of the official real-reference code
(tests/reference/vsp_official_ref.py, checker env), the layer rule, the swap's gating, several references.

Settings: tiny SD 2 (v-prediction), 16x16 images (8x8 latents), 4 DDIM steps (labels 751, 501, 251, 1) with the
swap on the first 3 (activate_step 2) and colour calibration on 600 > t > 200 (labels 501 and 251), CFG 7.
"""

from pathlib import Path

import jittor as jt
import numpy as np
import pytest

from jstyle import load_pipeline
from jstyle.errors import InputError
from jstyle.methods.registry import InjectJob
from jstyle.methods.vsp import VSPConfig, calibrate, inject, reference_noise, vsp_latents, vsp_layers

from ..tolerance import UINT8, assert_close, f32_bound
from .conftest import reference_npz
from .test_styleid import _image  # a smooth colour gradient plus noise, uint8 [16, 16, 3]

REF = Path(__file__).resolve().parents[1] / "reference" / "vsp_official_ref.py"
CFG = VSPConfig(steps=4, guidance=7.0, activate_step=2, color_cal_start_t=600, color_cal_window_size=400)
PROMPT = "a cat"


@pytest.fixture(scope="module")
def setup(tiny_ref, tmp_path_factory):
    rng = np.random.default_rng(0)
    reference = _image(rng)
    latents = rng.standard_normal((2, 4, 8, 8)).astype(np.float32)
    noise = reference_noise(rng, CFG.steps, (1, 4, 8, 8))
    inputs = dict(reference=reference, latents=latents, noise=noise, prompt=np.array(PROMPT),
                  ref_prompt=np.array(CFG.reference_prompt), steps=np.array(CFG.steps),
                  guidance=np.array(CFG.guidance), activate_step=np.array(CFG.activate_step),
                  color_cal_start_t=np.array(CFG.color_cal_start_t),
                  color_cal_window_size=np.array(CFG.color_cal_window_size))
    key = b"".join(v.tobytes() for v in inputs.values())
    ref = reference_npz(REF, "vsp-official", key, inputs, tiny_ref / "sd2", tmp_path_factory)
    return load_pipeline(tiny_ref / "sd2"), reference, latents, noise, ref


# Parity bound: float32 rounding of the longest reduction (3x3 conv over 64 channels, 576 terms, |z| <= 3) per UNet
# call, which CFG 7 takes (1 + 2 w) = 15 times into the step, over 4 steps: 4 * 15 * 576 * eps32 * 3 = 1.2e-2.
PARITY_ATOL = 4 * 15 * f32_bound(576, 3.0)


def test_matches_official_reference(setup):
    pipe, reference, latents, noise, ref = setup
    assert sorted(str(n) for n in ref["layers"] if str(n).endswith("attn1.processor")) == \
        [f"{n}.processor" for n in vsp_layers(pipe.unet)]
    z = vsp_latents(pipe, reference[None], PROMPT, jt.array(latents), noise, CFG)
    assert_close(z.numpy(), ref["latents"], atol=PARITY_ATOL, what="VSP latents")
    # < 1 level apart in float, so rounding flips by at most 1 (a proof)
    assert_close(pipe.decode_latents(z), ref["images"], atol=UINT8, what="VSP images")


def test_layer_rule_and_the_swap_matter(setup):
    pipe, reference, latents, noise, _ = setup
    # the last up-block with self-attention: the tiny UNet's up_blocks.1 (SD 2.1: up_blocks.3; SDXL: up_blocks.1)
    assert vsp_layers(pipe.unet) == [f"up_blocks.1.attentions.{i}.transformer_blocks.0.attn1" for i in range(3)]
    assert vsp_layers(pipe.unet, ("up_blocks.1.attentions.2",)) == \
        ["up_blocks.1.attentions.2.transformer_blocks.0.attn1"]
    swapped = vsp_latents(pipe, reference[None], PROMPT, jt.array(latents), noise, CFG).numpy()
    plain = vsp_latents(pipe, reference[None], PROMPT, jt.array(latents), noise,
                        VSPConfig(**{**CFG.__dict__, "activate_step": -1})).numpy()
    # the reference's keys and values changed the image by more than rounding could (random tiny weights: its
    # self-attention moves the latents little; measured max 0.026, mean 0.011)
    assert np.abs(swapped - plain).max() > PARITY_ATOL


def test_calibration_takes_the_reference_statistics():
    rng = np.random.default_rng(2)
    x0, ref = rng.normal(1, 2, (3, 4, 8, 8)), rng.normal(-1, 0.5, (2, 4, 8, 8))
    got = calibrate(jt.array(x0.astype(np.float32)), jt.array(ref.astype(np.float32))).numpy()
    pooled = ref.transpose(1, 0, 2, 3).reshape(4, -1)
    centred = x0 - x0.mean((2, 3), keepdims=True)
    want = centred / (centred.std((2, 3), ddof=1, keepdims=True) + 1e-8) * pooled.std(1, ddof=1)[None, :, None, None] \
        + pooled.mean(1)[None, :, None, None]
    assert_close(got, want, atol=f32_bound(128, 8.0), what="colour calibration")


def test_a_reference_twice_is_that_reference(setup):
    """k = 2 copies (same image, same draws) against k = 1, calibration off (duplicates change an unbiased std):
    softmax over [K; K] with [V; V] weighs each pair as one key; the same float ops in another order."""
    pipe, reference, latents, noise, _ = setup
    cfg = VSPConfig(**{**CFG.__dict__, "color_cal_window_size": 0})
    one = vsp_latents(pipe, reference[None], PROMPT, jt.array(latents), noise, cfg).numpy()
    two = vsp_latents(pipe, np.stack([reference] * 2), PROMPT, jt.array(latents), np.concatenate([noise] * 2, 2),
                      cfg).numpy()
    assert_close(two, one, atol=PARITY_ATOL, what="a reference pooled with itself")


def test_inject_and_bad_inputs(setup, tmp_path):
    from PIL import Image

    pipe, reference, *_ = setup
    paths = []
    for i in range(2):
        paths.append(tmp_path / f"r{i}.png")
        Image.fromarray(np.roll(reference, 3 * i, axis=1)).save(paths[-1])
    job = InjectJob(settings=VSPConfig(steps=2), style="00", prompt="Cat", content=None, references=paths,
                    reference_rule="first", size=16, guidance=1.0, seed=0, obj="Cat", reference_count="2")
    image, info = inject(pipe, job)
    assert image.shape == (16, 16, 3) and info == {"reference": "r0.png,r1.png"}
    native, _ = inject(pipe, InjectJob(**{**job.__dict__, "reference_size": "native"}))  # 16 px files: the same
    assert np.array_equal(native, image)
    with pytest.raises(InputError, match="must be 16x16"):
        inject(pipe, InjectJob(**{**job.__dict__, "reference_size": "24"}))


def _softmax_attention(q, k, v, scale):
    s = np.einsum("hnd,hmd->hnm", q, k) * scale
    p = np.exp(s - s.max(-1, keepdims=True))
    return np.einsum("hnm,hmd->hnd", p / p.sum(-1, keepdims=True), v)


@pytest.mark.parametrize("negative_query", [False, True], ids=["vsp", "nvqg"])
def test_processor_rows(negative_query):
    """Batch [uncond: ref, image; cond: ref, image], 2 heads, 6 tokens: which queries meet which keys and values."""
    from jstyle.methods.vsp_processors import VSPProcessor
    from jstyle.models.attention import Attention

    rng = np.random.default_rng(3)
    q, k, v = (rng.standard_normal((4, 2, 6, 4)).astype(np.float32) for _ in range(3))
    attn = Attention(8, heads=2, dim_head=4)
    got = VSPProcessor("x", 1, negative_query=negative_query).attend(attn, jt.array(q), jt.array(k), jt.array(v),
                                                                      None).numpy()
    pairs = {0: (0, 0, 0), 2: (2, 2, 2), 3: (3, 2, 2)}  # row: (query row, key/value row); refs attend to their own
    pairs[1] = (0, 1, 1) if negative_query else (1, 0, 0)  # uncond image: Q_ref on its own K, V (nvqg), else K_ref
    for row, (qi, ki, vi) in pairs.items():
        assert_close(got[row], _softmax_attention(q[qi], k[ki], v[vi], attn.scale), atol=f32_bound(6, 4.0),
                     what=f"row {row}")
