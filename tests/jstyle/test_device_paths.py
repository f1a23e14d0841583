"""Paths that only CUDA or float16 would take, forced on CPU and checked against diffusers.

`jstyle.ops.attention` picks batched matmuls on CUDA and per-head GEMMs on CPU: both kernels run here on the
tiny UNets and on small inputs with a mask. diffusers' precision rules (upcast_attention: Q K^T in float32;
upcast_softmax: the softmax in float32; probabilities and P V in V's dtype) are checked in float16 on
scores of ~566 that differ by ~1, where float16 scores cost 400x the upcast path's error. The upcast
flags every Attention layer gets from the UNet and VAE configs are compared with diffusers' layers. The
float16 VAE, and a float32 VAE under a float16 UNet (vae_dtype, diffusers' force_upcast), decode as diffusers'.
References: tests/reference/attention_ref.py (checker env).
"""

from __future__ import annotations

import hashlib

import jittor as jt
import numpy as np
import pytest

from jstyle import mkl
from jstyle.errors import ConfigError
from jstyle.loading import load_model
from jstyle.models.attention import Attention, AttnProcessor
from jstyle.models.autoencoder_kl import AutoencoderKL
from jstyle.models.unet_2d_condition import UNet2DConditionModel
from jstyle.ops import ATTENTION_KERNELS, attention, attention_kernel
from jstyle.pipeline import StableDiffusion, load_pipeline, resolve_vae_dtype
from tests.tolerance import EPS16, assert_close, f32_bound

from .conftest import ROOT, reference_npz

REF = ROOT / "tests" / "reference" / "attention_ref.py"


def make_inputs() -> dict[str, np.ndarray]:
    """float32 q [2, 2, 16, 8], k / v [2, 2, 12, 8], mask [2, 1, 16, 12]; float16 q16 / k16 (scores ~566) / v16."""
    rng = np.random.default_rng(5)
    a = {n: rng.standard_normal((2, 2, 16 if n == "q" else 12, 8)).astype(np.float32) for n in "qkv"}
    mask = rng.standard_normal((2, 1, 16, 12)).astype(np.float32)
    mask[..., -3:] = -1e4  # masked keys, as an attention mask writes them
    a["mask"] = mask
    # scores of ~566 that differ by ~1 (Q and K share a direction of norm 40): float16 scores (ulp 0.5) lose the
    # softmax, float32 ones (upcast_attention) keep it
    u = np.full(8, 8**-0.5) * 40
    a["q16"] = (u + rng.standard_normal((1, 2, 16, 8))).astype(np.float16)
    a["k16"] = (u + 0.05 * rng.standard_normal((1, 2, 16, 8))).astype(np.float16)
    a["v16"] = rng.standard_normal((1, 2, 16, 8)).astype(np.float16)
    a["latents"] = np.random.default_rng(0).standard_normal((1, 4, 2, 2)).astype(np.float32)  # test_fp16's latent
    return a


INPUTS = make_inputs()


@pytest.fixture(scope="module")
def ref(tiny_ref, tmp_path_factory) -> dict[str, np.ndarray]:
    key = hashlib.sha256(b"".join(v.tobytes() for v in INPUTS.values())).digest()
    return reference_npz(REF, "attention", key, INPUTS, tiny_ref, tmp_path_factory)


def test_dispatcher_picks_batched_on_cuda_per_head_on_cpu_and_fused_for_cpu_inference():
    assert attention_kernel(4, use_cuda=True) == "batched"
    assert attention_kernel(4, use_cuda=False) == "per_head"
    assert attention_kernel(3, use_cuda=False) == "batched"  # per-head needs [B, heads, N, d]
    q, k, v, mask = (jt.array(INPUTS[n]) for n in ("q", "k", "v", "mask"))
    auto = attention(q, k, v, 0.35, mask).numpy()  # this machine has no CUDA: the per-head kernel, bit for bit
    np.testing.assert_array_equal(auto, attention(q, k, v, 0.35, mask, kernel="per_head").numpy())
    with pytest.raises(ValueError, match="unknown attention kernel 'flash'"):
        attention(q, k, v, 0.35, kernel="flash")
    with pytest.raises(ValueError, match="per_head attention kernel needs"):
        attention(q[0], k[0], v[0], 0.35, kernel="per_head")
    with jt.no_grad():  # CPU inference in float32: the fused kernel, the same figures to float32 rounding
        fused = attention(q, k, v, 0.35, mask).numpy()
        np.testing.assert_array_equal(fused, attention(q, k, v, 0.35, mask, kernel="fused").numpy())
        # a module in training mode keeps the per-head forward (checkpointing runs it under no_grad)
        np.testing.assert_array_equal(attention(q, k, v, 0.35, mask, training=True).numpy(), auto)
        with pytest.raises(ValueError, match="fused attention kernel needs float32"):
            attention(q.float16(), k.float16(), v.float16(), 0.35, kernel="fused")
    # two kernels (one pass per query row vs per-head GEMMs), the softmax of 12 keys summed in other orders: as
    # against diffusers below, eps32 x 12 x |scores| 5 x |V| 3 = 2.1e-5
    assert_close(fused, auto, atol=f32_bound(12, 5 * 3), what="fused vs per_head")
    with pytest.raises(ValueError, match="no gradient"):
        attention(q, k, v, 0.35, mask, kernel="fused")


@pytest.mark.parametrize("kernel", [k for k in ATTENTION_KERNELS if k != "blocks"])
def test_kernel_with_mask_matches_diffusers_attention(kernel, ref):
    """A mask broadcast over the heads (CLIP's causal mask takes the batched kernel on CUDA). The blocks kernel
    takes no mask: it is checked against diffusers in every attention layer of the tiny UNets below."""
    q, k, v, mask = (jt.array(INPUTS[n]) for n in ("q", "k", "v", "mask"))
    with jt.no_grad():  # fused runs without a gradient only
        out = attention(q, k, v, 8**-0.5, mask, kernel=kernel).numpy()
    # float32 softmax of 12 keys, |scores| <~ 5, |V| <~ 3: eps32 x 12 x 5 x 3 ~ 2e-5; measured 3.6e-7
    assert_close(out, ref["out32_mask"], atol=f32_bound(12, 5 * 3), what=kernel)


@pytest.fixture(scope="module")
def unets(tiny_ref) -> dict[str, UNet2DConditionModel]:
    return {kind: load_model(UNet2DConditionModel, tiny_ref / kind / "unet") for kind in ("sd1", "sd2")}


# per_head: test_unet's kernels, compiled already; batched on sd2 only (upcast attention, heads (2, 4)): sd1's
# batched run would cost another 7.5 s of kernel compilation for the same branch
@pytest.mark.parametrize("kind, kernel", [("sd1", "per_head"), ("sd2", "per_head"), ("sd2", "batched"),
                                          ("sd2", "blocks")])
def test_unet_with_each_kernel_matches_diffusers(kind, kernel, unets, refs):
    """Each kernel forced in every attention layer of the tiny UNets (blocks: inference, where MKL is)."""
    if kernel == "blocks" and not mkl.available():
        pytest.skip("the blocks kernel needs MKL (envs/setup.sh)")
    unet, r = unets[kind], refs(kind)
    unet.set_attn_processor(AttnProcessor(kernel=kernel))
    try:  # no jt.no_grad() but for blocks: the graph of test_unet, whose per-head kernels are compiled already
        with jt.flag_scope(no_grad=int(kernel == "blocks")):
            out = unet(jt.array(r["unet_sample"]), jt.array(r["unet_timesteps"]), jt.array(r["unet_context"]))
    finally:
        unet.set_attn_processor(AttnProcessor())
    # float32 through ~30 layers of width <= 64 on outputs ~2.5: eps32 x 64 x 30 x 2.5 ~ 5.7e-4; measured ~4e-6
    assert_close(out.numpy(), r["unet_out"], atol=f32_bound(64 * 30, 2.5), what=f"{kind} {kernel}")


def jstyle_flags(model) -> dict[str, tuple[int, int]]:
    return {name: (int(m.upcast_attention), int(m.upcast_softmax))
            for name, m in model.named_modules() if isinstance(m, Attention)}


def test_upcast_flags_follow_the_configs_as_in_diffusers(unets, tiny_ref, ref):
    """upcast_attention (UNet config) reaches attn1 and attn2 of every transformer; the VAE upcasts its softmax."""
    for kind in ("sd1", "sd2"):
        want = {str(n): tuple(int(x) for x in f) for n, f in zip(ref[f"{kind}_names"], ref[f"{kind}_upcast"],
                                                                 strict=True)}
        assert jstyle_flags(unets[kind]) == want
    assert set(want.values()) == {(1, 0)}  # sd2's config has upcast_attention: true
    vae = load_model(AutoencoderKL, tiny_ref / "sd2" / "vae")
    assert jstyle_flags(vae) == {str(n): tuple(int(x) for x in f)
                                 for n, f in zip(ref["vae_names"], ref["vae_upcast"], strict=True)}


# (upcast_attention, upcast_softmax): SD2's UNet (1, 0), SD1's (0, 0), the VAE's and CLIP's (0, 1); the batched
# kernel is CUDA's (every case), per-head float16 only runs on CPU (two cases, few kernels to compile)
FLOAT16_CASES = {"batched": ((1, 0), (0, 0), (0, 1)), "per_head": ((1, 0), (0, 0))}


@pytest.mark.parametrize("kernel", sorted(FLOAT16_CASES))
def test_float16_upcast_rules_match_diffusers(kernel, ref):
    q, k, v = (jt.array(INPUTS[f"{n}16"]) for n in "qkv")
    exact = ref["out16_exact"]
    for ua, us in FLOAT16_CASES[kernel]:
        out = attention(q, k, v, 8**-0.5, upcast_attention=bool(ua), upcast_softmax=bool(us), kernel=kernel)
        assert out.dtype == "float16"
        got, want = out.numpy().astype(np.float64), ref[f"out16_{ua}{us}"]
        # upcast: float32 scores; probabilities and P V (16 terms, |V|, |out| <~ 0.6 on average) in float16:
        # 16 x eps16 x 0.6 = 9.4e-3; measured 8.3e-4 from float64, 7.3e-4 from diffusers (diffusers: 3.4e-4)
        bound = 16 * EPS16 * 0.6
        if ua:
            assert_close(got, exact, atol=bound, what=f"{kernel} upcast {ua}{us} vs float64")
            assert_close(got, want, atol=bound, what=f"{kernel} upcast {ua}{us} vs diffusers")
        else:
            # float16 scores of ~566 round by up to 0.25: both libraries lose the softmax (measured 0.31 here,
            # 0.19 in diffusers); no worse than 3x diffusers, and never silently upcast (>10x the upcast bound)
            err, theirs = np.abs(got - exact).max(), np.abs(want - exact).max()
            assert 10 * bound <= err <= 3 * theirs, f"{kernel} {ua}{us}: {err:.3g} vs diffusers' {theirs:.3g}"


@pytest.fixture(scope="module")
def half_pipes(tiny_ref) -> dict[str, StableDiffusion]:
    """The tiny SD2-like pipeline with a float16 UNet and text encoder, its VAE in float16 or float32 ("auto")."""
    return {"float16": load_pipeline(tiny_ref / "sd2", dtype="float16"),
            "float32": load_pipeline(tiny_ref / "sd2", dtype="float16", vae_dtype="auto")}


def test_float16_vae_decode_matches_diffusers(half_pipes, ref):
    out = half_pipes["float16"].vae_decode(jt.array(INPUTS["latents"]))
    assert out.dtype == "float16"
    # float16 convolutions (Jittor's generic CPU kernels accumulate in float16) of up to 64 channels on
    # outputs <~ 1.5: eps16 x 64 x 1.5 = 0.094; measured 8.9e-3 from diffusers' float32, 8.5e-3 from float16
    bound = EPS16 * 64 * 1.5
    assert_close(out.numpy(), ref["vae_dec32"], atol=bound, what="float16 VAE vs diffusers float32")
    assert_close(out.numpy(), ref["vae_dec16"], atol=bound, what="float16 VAE vs diffusers float16")


def test_float32_vae_under_float16_unet_matches_diffusers(half_pipes, ref):
    pipe = half_pipes["float32"]
    assert (pipe.dtype, pipe.vae_dtype) == ("float16", "float32")  # the tiny VAE config has force_upcast: true
    assert pipe.unet.conv_in.weight.dtype == "float16" and pipe.vae.decoder.conv_in.weight.dtype == "float32"
    latents = jt.array(INPUTS["latents"]).float16()  # as the float16 UNet leaves them
    out = pipe.vae_decode(latents)
    assert out.dtype == "float32"
    # the same float16 latents decoded in float32 by both: as test_vae, eps32 x 64 channels x 12 layers x 1.5
    # = 1.4e-4; measured 1.4e-6 (from diffusers' float32 decoding of the unrounded latents: 8.5e-4)
    assert_close(out.numpy(), ref["vae_dec32_from16"], atol=f32_bound(64 * 12, 1.5), what="float32 VAE")
    want = np.round(np.clip(out.numpy() / 2 + 0.5, 0, 1).transpose(0, 2, 3, 1) * 255)
    assert_close(pipe.decode_latents(latents), want, what="decode_latents: the same decoding as uint8")


def test_vae_dtype_resolution():
    assert resolve_vae_dtype("float16", "auto", force_upcast=True) == "float32"  # diffusers' force_upcast
    assert resolve_vae_dtype("float16", "auto", force_upcast=False) == "float16"
    assert resolve_vae_dtype("float32", "auto", force_upcast=True) == "float32"
    assert resolve_vae_dtype("float16", None, force_upcast=True) == "float16"  # StableDiffusionPipeline's
    assert resolve_vae_dtype("float16", "float32", force_upcast=False) == "float32"
    with pytest.raises(ConfigError, match="vae_dtype 'bfloat16' is not supported; use float32, float16 or auto"):
        load_pipeline(ROOT, vae_dtype="bfloat16")
