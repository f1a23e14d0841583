"""Dynamic loss scaling (fp16 mixed precision) as torch.cuda.amp.GradScaler: scale, unscale before clipping,
skip the step and halve the scale on inf/NaN, grow after `growth_interval` good steps.

Jittor's float16 is not what is tested here: the scaler logic runs on a float32 tiny model with
mixed_precision="fp16" (the scale is a power of two, so it is exact in float32) and injected inf gradients.
"""

from __future__ import annotations

import jittor as jt
import numpy as np
import pytest
from PIL import Image

from jstyle import lora as L
from jstyle.errors import ConfigError
from jstyle.pipeline import load_pipeline
from jstyle.tiny import write_tiny_pipeline
from jstyle.training import LoRATrainConfig, LoRATrainer
from jstyle.training.optim import LossScaler, all_finite

from ..tolerance import assert_close


def test_scaler_follows_grad_scaler_rules():
    s = LossScaler(growth_interval=3)
    assert s.scale == 2.0**16  # GradScaler's init_scale
    outcomes = [True, False, True, True, True, True, False]
    skips, scales = [], []
    for finite in outcomes:
        skips.append(s.update(finite))
        scales.append(s.scale)
    # inf: x0.5 and skip; three finite steps in a row: x2 (tracker reset by the skip and by the growth)
    assert skips == [False, True, False, False, False, False, True]
    assert scales == [2.0**16, 2.0**15, 2.0**15, 2.0**15, 2.0**16, 2.0**16, 2.0**15]
    assert s.good_steps == 0
    off = LossScaler(enabled=False)
    assert off.scale == 1.0 and off.update(False) is False and off.scale == 1.0  # float32: never scaled
    g = [jt.array(np.array([2.0**17], np.float32))]
    assert s.unscale(g)[0].item() == 4.0 and off.unscale(g) is g
    with pytest.raises(ConfigError, match="growth_factor > 1"):
        LossScaler(growth_factor=1.0)


def test_all_finite_sees_inf_and_nan_without_overflowing():
    big = jt.array(np.full(4, 1e30, np.float32))  # squares overflow float32; 0 * x does not
    assert all_finite([big, jt.zeros(3)])
    assert not all_finite([big, jt.array(np.array([0.0, np.inf], np.float32))])
    assert not all_finite([jt.array(np.array([np.nan], np.float32))])


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    return load_pipeline(write_tiny_pipeline(tmp_path_factory.mktemp("sd") / "tiny_sd2", "sd2", seed=0))


@pytest.fixture(scope="module")
def style_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("data") / "03"
    (d / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("Dolphin", "Bread"):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(d / "images" / f"{name}.png")
    return d


def _trainer(pipe, style_dir, out, precision):
    cfg = LoRATrainConfig(style_dir=str(style_dir), resolution=16, output_dir=str(out), progress=False,
                          mixed_precision=precision, max_train_steps=4, learning_rate=1e-3, max_grad_norm=1e-3)
    L.remove_lora(pipe.unet)
    return LoRATrainer(pipe, cfg)


def test_inf_gradients_skip_the_step_and_halve_the_scale(pipe, style_dir, tmp_path, monkeypatch):
    plain = _trainer(pipe, style_dir, tmp_path / "no", "no")
    ref = [plain.train_step()["grad_norm"] for _ in range(2)]
    tr = _trainer(pipe, style_dir, tmp_path / "fp16", "fp16")
    tr.scaler.growth_interval = 2
    before = [p.numpy().copy() for p in tr.params]
    real = tr.compute_loss
    monkeypatch.setattr(tr, "compute_loss", lambda b, rng: real(b, rng) * float("inf"))  # an fp16 overflow
    bad = tr.train_step()
    assert bad["skipped"] and bad["loss_scale"] == 2.0**16 and tr.loss_scale == 2.0**15
    assert all(np.array_equal(p.numpy(), q) for p, q in zip(tr.params, before, strict=True))  # no update
    monkeypatch.setattr(tr, "compute_loss", real)
    tr.step = 0  # replay the float32 run's steps (same data and noise draws) at the halved scale
    good = [tr.train_step() for _ in range(2)]
    assert [e["loss_scale"] for e in good] == [2.0**15, 2.0**15] and tr.loss_scale == 2.0**16  # grew after 2
    assert not any(e.get("skipped") for e in good)
    # Clipping sees the unscaled gradients: the norms equal the float32 run's. The scale is a power of two
    # (exact in float32), so only accumulation order could differ: relative rounding ~1e-7, bound 1e-5; a
    # norm taken before unscaling is 2**15 times larger.
    assert_close([e["grad_norm"] for e in good], ref, rtol=1e-5, what="grad norm after unscaling")
    assert max(np.abs(p.numpy() - q).max() for p, q in zip(tr.params, before, strict=True)) > 0  # it trained
    L.remove_lora(pipe.unet)
