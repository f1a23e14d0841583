"""jstyle.training.freeze_except on the tiny SD2-like UNet: the frozen base stays frozen through Jittor's
train() / eval() (which undo a plain stop_grad on a loaded model), and gradient checkpointing then
differentiates the LoRA tensors only."""

from __future__ import annotations

import jittor as jt
import numpy as np

from jstyle import lora as L
from jstyle.loading import load_model
from jstyle.models.unet_2d_condition import UNet2DConditionModel
from jstyle.training import checkpointing as C
from jstyle.training.freeze import freeze_except


def test_base_stays_frozen_through_train_and_eval(tiny_ref, monkeypatch):
    unet = load_model(UNet2DConditionModel, tiny_ref / "sd2" / "unet")  # load_model calls eval()
    L.inject_lora(unet, ["to_q", "to_k", "to_v", "to_out.0"], rank=4, alpha=4, rng=np.random.default_rng(1))
    lora = L.lora_parameters(unet)
    ids = {id(p) for p in lora}
    base = [p for p in unet.parameters() if id(p) not in ids]
    for p in base:  # the trap: eval() recorded these as trainable, so train() starts their gradients again
        p.stop_grad()
    unet.train()
    assert not any(p.is_stop_grad() for p in base)

    assert freeze_except(unet, lora) == len(base) > len(lora)
    for m in (unet, unet.down_blocks[0], unet):
        m.eval()
        m.train()
    assert all(p.is_stop_grad() for p in base)
    assert not any(p.is_stop_grad() for p in lora)

    given = []  # the trainable weights each checkpointed block hands to the recomputation
    original = C.checkpoint
    monkeypatch.setattr(C, "checkpoint", lambda fn, xs, ps, *a: given.append(ps) or original(fn, xs, ps, *a))
    C.enable_gradient_checkpointing(unet)
    rng = np.random.default_rng(0)
    x = jt.array(rng.standard_normal((1, 4, 8, 8)).astype(np.float32))
    ctx = jt.array(rng.standard_normal((1, 77, unet.config["cross_attention_dim"])).astype(np.float32))
    out = unet(x, 500, ctx)
    assert len(given) == 18  # 12 ResNet blocks + 6 transformer blocks
    assert [len(ps) for ps in given if ps] == [2 * 4 * 2] * 6  # per transformer: 2 attentions x 4 targets x (A, B)
    assert {id(p) for ps in given for p in ps} == ids
    grads = jt.grad((out**2).mean(), lora)
    C.run_backward(unet, grads)
    # B starts at 0, so A's gradients are 0 and B's are not
    assert sum(bool(np.abs(g.numpy()).max() > 0) for g in grads) == len(grads) // 2
