"""`jstyle.ops.attention_recomputed` (training's attention on CPU: the per-head forward, a backward that
recomputes one head's probabilities at a time) against the autodiff of `attention_batched`: the same outputs
and dQ, dK, dV with and without a mask, with a broadcast K/V batch or head, and with float16's upcast flags;
`attention` takes it exactly when gradients are wanted; the tiny UNet's LoRA gradients are the batched
kernel's. Inputs and shapes are test_device_paths' (their kernels are compiled already).
"""

from __future__ import annotations

import jittor as jt
import numpy as np
import pytest

from jstyle import lora as L
from jstyle import ops
from jstyle.loading import load_model
from jstyle.models.attention import AttnProcessor
from jstyle.models.unet_2d_condition import UNet2DConditionModel
from jstyle.ops import attention, attention_batched, attention_per_head, attention_recomputed
from jstyle.training.freeze import freeze_except
from tests.tolerance import EPS16, assert_close, f32_bound

from .test_device_paths import INPUTS

SCALE = 8**-0.5
WEIGHT = np.random.default_rng(6).standard_normal((2, 2, 16, 8)).astype(np.float32)  # loss = sum(out * W)


def out_and_grads(fn, q, k, v, mask=None, **flags) -> list[np.ndarray]:
    """[out, dQ, dK, dV] of loss = sum(fn(q, k, v) * W) (W in the output's dtype)."""
    out = fn(q, k, v, SCALE, mask, **flags)
    w = jt.array(WEIGHT[: q.shape[0], : q.shape[1]]).cast(out.dtype)
    return [x.numpy().astype(np.float64) for x in [out, *jt.grad((out * w).sum(), [q, k, v])]]


def qkv32(broadcast: str = "") -> tuple[jt.Var, jt.Var, jt.Var]:
    q, k, v = (INPUTS[n] for n in "qkv")
    if broadcast == "head":
        k, v = k[:, :1], v[:, :1]
    elif broadcast == "batch":
        k, v = k[:1], v[:1]
    return jt.array(q), jt.array(k), jt.array(v)


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("broadcast", ["", "head", "batch"])
def test_float32_output_and_gradients_match_autodiff(masked, broadcast):
    q, k, v = qkv32(broadcast)
    mask = jt.array(INPUTS["mask"]).stop_grad() if masked else None  # [2, 1, 16, 12], broadcast over the heads
    got = out_and_grads(attention_recomputed, q, k, v, mask)
    want = out_and_grads(attention_batched, q, k, v, mask)
    # float32, |values| <~ 3; the longest chain of reductions: dP over d = 8, the softmax and dQ over M = 12,
    # dK and dV over N = 16 (x 2 where a broadcast K/V sums two heads): eps32 x 2 x 36 x 3 = 2.6e-5; measured
    # <= 7.2e-7
    bound = f32_bound(2 * (8 + 12 + 16), 3.0)
    for name, g, w in zip(["out", "dQ", "dK", "dV"], got, want, strict=True):
        assert np.abs(w).max() > 0.5, name  # a real gradient, not zeros on both sides
        assert_close(g, w, atol=bound, what=f"{name} mask={masked} broadcast={broadcast!r}")


# (upcast_attention, upcast_softmax, inputs): SD2's UNet on scores of ~566 that differ by ~1 (float16 scores
# would lose the softmax, test_device_paths), the VAE's and CLIP's on the float32 inputs rounded to float16
@pytest.mark.parametrize("ua, us, names", [(1, 0, ("q16", "k16", "v16")), (0, 1, ("q", "k", "v"))])
def test_float16_upcast_gradients_match_float32(ua, us, names):
    half = [jt.array(INPUTS[n]).float16() for n in names]
    got = out_and_grads(attention_recomputed, *half, upcast_attention=bool(ua), upcast_softmax=bool(us))
    theirs = out_and_grads(attention_batched, *half, upcast_attention=bool(ua), upcast_softmax=bool(us))
    exact = out_and_grads(attention_batched, *(x.float32() for x in half))  # the same values, all in float32
    for name, g, t, w in zip(["out", "dQ", "dK", "dV"], got, theirs, exact, strict=True):
        # float16 GEMMs and probabilities (eps16 each) along reductions over d = 8, M = 12 or 16, N = 16:
        # eps16 x 40 of the value's size; measured <= 0.045 of it
        bound = EPS16 * (8 + 16 + 16) * np.abs(w).max()
        assert_close(g, w, atol=bound, what=f"{name} upcast {ua}{us} vs float32")
        if name != "out":  # (the forward pass is attention_per_head's, tested in test_device_paths)
            # no worse than the batched kernel's float16 autodiff (measured: 0.83-1.15x its error)
            ours, batched = np.abs(g - w).max(), np.abs(t - w).max()
            assert ours <= 1.5 * batched, f"{name}: error {ours:.3g}, the batched autodiff's {batched:.3g}"


def test_attention_takes_it_with_gradients_only(monkeypatch):
    q, k, v = qkv32()
    mask = jt.array(INPUTS["mask"])
    calls = []
    monkeypatch.setattr(ops, "attention_recomputed",
                        lambda *a: calls.append(1) or attention_recomputed(*a))
    with jt.no_grad():  # per_head named: without it, CPU inference in float32 takes the fused kernel
        inference = attention(q, k, v, SCALE, kernel="per_head").numpy()
    assert calls == []
    training = out_and_grads(attention, q, k, v)
    assert calls == [1]
    per_head = attention_per_head(q, k, v, SCALE).numpy()
    np.testing.assert_array_equal(inference, per_head)
    np.testing.assert_array_equal(training[0], per_head)  # the same forward pass, bit for bit
    out_and_grads(attention, q, k, v, mask)  # a mask with a gradient of its own: autodiff (the mask's grad)
    assert calls == [1]
    assert jt.grad(attention(q, k, v, SCALE, mask).sum(), mask).numpy().any()


def test_tiny_unet_lora_gradients_equal_the_batched_kernel(tiny_ref):
    unet = load_model(UNet2DConditionModel, tiny_ref / "sd2" / "unet")
    L.inject_lora(unet, ["to_q", "to_k", "to_v", "to_out.0"], rank=4, alpha=4, rng=np.random.default_rng(1))
    params = L.lora_parameters(unet)
    freeze_except(unet, params)
    for i, p in enumerate(params):  # B starts at 0: make every gradient non-zero
        p.assign(p + jt.array(np.random.default_rng(i).standard_normal(p.shape).astype(np.float32)) * 0.05)
    rng = np.random.default_rng(0)
    x = jt.array(rng.standard_normal((2, 4, 8, 8)).astype(np.float32))
    ctx = jt.array(rng.standard_normal((2, 77, unet.config["cross_attention_dim"])).astype(np.float32))
    unet.train()

    def grads(kernel: str | None) -> list[np.ndarray]:
        unet.set_attn_processor(AttnProcessor(kernel=kernel))
        return [g.numpy() for g in jt.grad((unet(x, 500, ctx) ** 2).mean(), params)]

    got, want = grads(None), grads("batched")
    assert len(got) == 4 * 2 * 6 * 2  # q, k, v, out x (A, B) x 6 transformers x (attn1, attn2)
    scale = max(np.abs(w).max() for w in want)
    # float32 through ~30 layers of width <= 64 (test_unet's model), relative to the largest gradient:
    # eps32 x 64 x 30 = 2.3e-4 of it; measured ~1e-6
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert_close(g, w, atol=f32_bound(64 * 30, scale), what=f"LoRA tensor {i}")
