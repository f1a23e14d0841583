"""float16 on CPU (Jittor's generic kernels): the tiny SD2-like model's parts in float16 agree with float32 to
float16 precision, and a float16 mixed-precision LoRA step (frozen base in float16, LoRA and loss in float32)
follows the float32 one. This path feeds GPUs; on CPU it broke where Jittor's exp / sigmoid / erf return
float32 for float16 inputs and oneDNN refused the mixed float32 x float16 matmuls that followed."""

from __future__ import annotations

import dataclasses

import jittor as jt
import numpy as np
import pytest
from PIL import Image

from jstyle import lora as L
from jstyle.errors import ConfigError
from jstyle.jobs.plan import RunConfig
from jstyle.jobs.stages import train_config
from jstyle.pipeline import load_pipeline
from jstyle.training import LoRATrainConfig, LoRATrainer, mixed_precision_for

from ..tolerance import UINT8, assert_at_most, assert_close


@pytest.fixture(scope="module")
def pipes(tiny_ref):
    return load_pipeline(tiny_ref / "sd2"), load_pipeline(tiny_ref / "sd2", dtype="float16")


def test_parts_agree_with_float32(pipes):
    p32, p16 = pipes
    c32, c16 = p32.encode_prompt("a Dolphin"), p16.encode_prompt("a Dolphin")
    assert c16.dtype == "float16"
    # measured: text 8.9e-3 of 3.2, UNet 0.033 of 0.74 (a random UNet compounds float16 rounding), VAE 1 level
    # float16 rounding (eps16 = 9.8e-4) of sums of ~61 terms on values ~3.2, one layer's worth, rounded to
    # nearest: 9.8e-4 * 61 * 3.2 / 2 = 0.096; measured 8.9e-3 (11x). A dtype bug gives garbage or NaN.
    assert_close(c16.numpy().astype(np.float32), c32.numpy(), atol=0.1, what="float16 text encoder")
    x = np.random.default_rng(0).standard_normal((1, 4, 2, 2)).astype(np.float32)
    with jt.no_grad():
        u32 = p32.unet(jt.array(x), 500, c32).numpy()
        u16 = p16.unet(jt.array(x).float16(), 500, c16)
    assert u16.dtype == "float16"
    # The random tiny UNet compounds float16 rounding through its layers: measured 0.033 of an output scale of
    # 0.74 (4.5%). The bound, 35% of the scale, is > 10x that and still catches what breaks a float16 path (a
    # missing cast, an overflow, a NaN: errors of 100% or more).
    assert_close(u16.numpy().astype(np.float32), u32, atol=0.35 * np.abs(u32).max(), what="float16 UNet")
    a, b = p32.decode_latents(jt.array(x)), p16.decode_latents(jt.array(x))  # fp32 latents are cast
    # float16 decode vs float32, as uint8: measured 1 level (one flipped rounding); bound 10 levels, while a
    # broken float16 VAE (overflow, black image) is off by 50 levels or more
    assert_close(a, b, atol=10 * UINT8, what="float16 VAE decode")
    image = p16.text_to_image("a Dolphin", num_inference_steps=2, guidance_scale=1.0, height=16, width=16,
                              generator=np.random.default_rng(0))
    assert image.shape == (1, 16, 16, 3)


def test_mixed_precision_lora_step_follows_float32(pipes, tmp_path):
    (tmp_path / "03" / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("Dolphin", "Bread"):
        image = rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)
        Image.fromarray(image).save(tmp_path / "03" / "images" / f"{name}.png")
    runs = []
    for pipe, precision in zip(pipes, ("no", "fp16"), strict=True):
        cfg = LoRATrainConfig(style_dir=str(tmp_path / "03"), resolution=16, output_dir=str(tmp_path / precision),
                              progress=False, mixed_precision=precision, max_train_steps=2, learning_rate=1e-3)
        tr = LoRATrainer(pipe, cfg)
        losses = [tr.train_step()["loss"] for _ in range(2)]
        assert {str(p.dtype) for p in tr.params} == {"float32"}
        runs.append((losses, [p.numpy().copy() for p in tr.params]))
        L.remove_lora(pipe.unet)
    (l32, w32), (l16, w16) = runs
    assert pipes[1].unet.conv_in.weight.dtype == "float16"  # the base stayed float16
    # measured: losses 0.4515/0.4303 vs 0.4525/0.4305; LoRA tensors within 3.7e-3 (of up to 0.93)
    # a float16 base rounds every forward activation (eps16 relative) and so the loss: measured 2.2e-3
    # relative; bound 3e-2 (13x). LoRA tensors after 2 Adam steps (lr 1e-3, each step up to lr per element
    # where gradients change sign): measured 3.7e-3 of up to 0.93; bound 5e-2 (13x); without loss scaling
    # the float16 gradients underflow and the tensors do not move (a difference of 2 * lr or more).
    assert_close(l16, l32, rtol=3e-2, what="float16-base losses")
    assert_at_most(max(np.abs(a - b).max() for a, b in zip(w32, w16, strict=True)), 5e-2, "LoRA tensors")


def test_float16_base_trains_with_loss_scaling_and_float32_lora(pipes, tmp_path):
    """The run stages load a float16 base on CUDA: its LoRA recipe resolves to fp16 mixed precision (dynamic
    loss scale 2**16, float32 LoRA tensors); a float16 base with mixed_precision 'no' is refused."""
    (tmp_path / "03" / "images").mkdir(parents=True)
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "03" / "images" / "Dolphin.png")
    run = RunConfig(data=str(tmp_path), model="m", out=str(tmp_path / "out"), train_size=16)
    assert (mixed_precision_for("float16"), mixed_precision_for("float32")) == ("fp16", "no")
    p32, p16 = pipes
    assert train_config(run, "03", tmp_path / "lora", p32.dtype).mixed_precision == "no"
    cfg = train_config(run, "03", tmp_path / "lora", p16.dtype)
    assert cfg.mixed_precision == "fp16"
    try:
        tr = LoRATrainer(p16, cfg)
        assert tr.loss_scale == 2.0**16
        assert tr.params and {str(p.dtype) for p in tr.params} == {"float32"}
        assert p16.unet.conv_in.weight.dtype == "float16"
    finally:
        L.remove_lora(p16.unet)
        L.remove_lora(p16.text_encoder)
    with pytest.raises(ConfigError, match="a float16 pipeline trains LoRA with mixed_precision='fp16'"):
        LoRATrainer(p16, dataclasses.replace(cfg, mixed_precision="no"))
