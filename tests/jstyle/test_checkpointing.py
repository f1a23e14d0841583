"""Gradient checkpointing (jstyle.training.checkpointing) on the tiny SD2-like UNet: the gradients of UNet and
text-encoder-side LoRA tensors equal those without it, LoRA dropout masks are drawn again identically, the
recomputation really runs in the backward pass, inference is untouched, and random nn.Dropout is refused."""

from __future__ import annotations

import jittor as jt
import numpy as np
import pytest

from jstyle import lora as L
from jstyle.errors import ConfigError
from jstyle.loading import load_model
from jstyle.models.unet_2d_condition import UNet2DConditionModel
from jstyle.training import checkpointing as C
from jstyle.training.freeze import freeze_except

from ..tolerance import assert_close, f32_bound

TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


@pytest.fixture(scope="module")
def unet(tiny_ref):
    model = load_model(UNet2DConditionModel, tiny_ref / "sd2" / "unet")
    L.inject_lora(model, TARGETS, rank=4, alpha=4, rng=np.random.default_rng(1))
    freeze_except(model, L.lora_parameters(model))
    for i, p in enumerate(L.lora_parameters(model)):  # B starts at 0: make every gradient non-zero
        p.assign(p + jt.array(np.random.default_rng(i).standard_normal(p.shape).astype(np.float32)) * 0.05)
    return model


def gradients(unet, dropout_seed: int | None = None, staged: bool = False) -> tuple[float, list[np.ndarray]]:
    """LoRA and context gradients of an MSE loss (the context stands for a text encoder being trained)."""
    rng = np.random.default_rng(0)
    x = jt.array(rng.standard_normal((2, 4, 8, 8)).astype(np.float32))
    ctx = jt.array(rng.standard_normal((2, 77, unet.config["cross_attention_dim"])).astype(np.float32))
    target = jt.array(rng.standard_normal((2, 4, 8, 8)).astype(np.float32))
    if dropout_seed is not None:
        L.set_lora_dropout_generator(unet, np.random.default_rng(dropout_seed))
    unet.train()
    loss = ((unet(x, 500, ctx) - target) ** 2).mean()
    params = L.lora_parameters(unet)
    grads = jt.grad(loss, params + [ctx])
    if staged:
        C.run_backward(unet, grads)
        assert not unet.__dict__[C._TAPE].entries
    return loss.item(), [g.numpy() for g in grads]


def test_same_gradients_with_recomputation(unet, monkeypatch):
    loss0, g0 = gradients(unet)
    calls = []
    original = C._Recompute.grad
    monkeypatch.setattr(C._Recompute, "grad", lambda self, *g: calls.append(1) or original(self, *g))
    assert C.enable_gradient_checkpointing(unet) == 18  # 12 ResNet blocks + 6 transformer blocks
    assert C.is_gradient_checkpointing(unet)
    loss1, g1 = gradients(unet)
    # every block recomputes but the first ResNet block (its input, the noisy latent, needs no gradient, and
    # it holds no LoRA tensor)
    assert len(calls) == 17
    assert len(unet.__dict__[C._TAPE].entries) == 17  # recorded for run_backward
    assert loss1 == loss0
    assert max(float(np.abs(g).max()) for g in g0[:-1]) > 1e-4 and float(np.abs(g0[-1]).max()) > 1e-6
    loss2, g2 = gradients(unet, staged=True)  # the backward pass run block by block: the same numbers
    assert loss2 == loss0
    # Recomputed blocks sum in another order: float32 rounding of the longest reduction (1152 terms) on the
    # gradient's scale (per tensor; elements near 0 come from cancellation, so a relative bound cannot hold).
    # Measured: equal, or within 3.1e-9 on gradients up to ~1e-3; a lost block's gradient is ~1e-4 or more.
    for a, b, c in zip(g0, g1, g2, strict=True):
        assert_close(b, a, atol=f32_bound(1152, np.abs(a).max()), what="checkpointed gradient")
        assert_close(c, a, atol=f32_bound(1152, np.abs(a).max()), what="block-by-block gradient")
    C.disable_gradient_checkpointing(unet)
    assert not C.is_gradient_checkpointing(unet)


def test_lora_dropout_masks_replayed(unet):
    for layer in L.lora_layers(unet).values():
        layer.dropout = 0.5
    try:
        _, g0 = gradients(unet, dropout_seed=7)
        _, g_other = gradients(unet, dropout_seed=8)
        C.enable_gradient_checkpointing(unet)
        _, g1 = gradients(unet, dropout_seed=7)
    finally:
        C.disable_gradient_checkpointing(unet)
        for layer in L.lora_layers(unet).values():
            layer.dropout = 0.0
    assert max(float(np.abs(a - b).max()) for a, b in zip(g0, g_other, strict=True)) > 1e-4  # masks matter
    for a, b in zip(g0, g1, strict=True):  # as above; measured 5.1e-9 at most on gradients of ~1e-3
        assert_close(b, a, atol=f32_bound(1152, np.abs(a).max()), what="gradient with replayed masks")


def test_inference_untouched_and_random_dropout_refused(unet):
    rng = np.random.default_rng(3)
    x = jt.array(rng.standard_normal((1, 4, 8, 8)).astype(np.float32))
    ctx = jt.array(rng.standard_normal((1, 77, unet.config["cross_attention_dim"])).astype(np.float32))
    unet.eval()
    with jt.no_grad():
        before = unet(x, 10, ctx).numpy()
        C.enable_gradient_checkpointing(unet)
        after = unet(x, 10, ctx).numpy()
    np.testing.assert_array_equal(after, before)
    block = unet.down_blocks[0].resnets[0]
    block.dropout.p = 0.1
    unet.train()
    try:
        with pytest.raises(ConfigError, match="ResnetBlock2D has dropout p=0.1"):
            unet(x, 10, ctx)
    finally:
        block.dropout.p = 0.0
        C.disable_gradient_checkpointing(unet)
