"""DreamBooth-LoRA training on the tiny SD2-like model (v-prediction), 16 px images, batch 1.

Loss goes down on a fixed batch, the base stays bitwise frozen, only LoRA tensors are optimized, an
interrupted + resumed run equals an uninterrupted one, the prior-preservation loss equals a numpy
computation, AdamW equals torch.optim.AdamW's formulas (numpy), and bad inputs give one-line errors.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import jittor as jt
import numpy as np
import pytest
from PIL import Image

from jstyle import lora as L
from jstyle.errors import ConfigError, InputError, JStyleError
from jstyle.pipeline import load_pipeline
from jstyle.tiny import write_tiny_pipeline
from jstyle.train_lora import main, train_lora
from jstyle.training import LoRATrainConfig, LoRATrainer, preset
from jstyle.training.dataset import load_rgb
from jstyle.training.optim import AdamW, clip_grad_norm, lr_at

from ..tolerance import EPS32, assert_at_most, assert_close

RES = 16


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return write_tiny_pipeline(tmp_path_factory.mktemp("sd") / "tiny_sd2", "sd2", seed=0)


@pytest.fixture(scope="module")
def pipe(model_dir):
    return load_pipeline(model_dir)


@pytest.fixture(scope="module")
def style_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("data") / "03"
    (d / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("Dolphin", "Bread", "Lion"):
        img = rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)
        img[:, :12] = img[:, :12] // 4  # some structure to learn
        Image.fromarray(img).save(d / "images" / f"{name}.png")
    (d / "images" / "Lion.txt").write_text("a big lion\n")
    return d


def config(style_dir, out, **kw) -> LoRATrainConfig:
    return LoRATrainConfig(style_dir=str(style_dir), resolution=RES, output_dir=str(out), progress=False, **kw)


def test_prompts_captions_and_templates(pipe, style_dir, tmp_path):
    tr = LoRATrainer(pipe, config(style_dir, tmp_path, instance_template="an image of {obj} in style_{id}",
                                  caption_prefix="art, "))
    assert [e.prompt for e in tr.examples] == [
        "art, an image of Bread in style_03", "art, an image of Dolphin in style_03",
        "art, an image of a big lion in style_03"]
    b = tr.batch(0, np.random.default_rng(0))
    assert b.pixels.shape == (1, 3, RES, RES) and -1 <= b.pixels.min() and b.pixels.max() <= 1
    L.remove_lora(pipe.unet)


def test_few_steps_lower_the_loss_base_frozen_only_lora_optimized(pipe, style_dir, tmp_path):
    base = {c: {k: v.numpy().copy() for k, v in getattr(pipe, c).state_dict().items() if "lora_" not in k}
            for c in ("unet", "text_encoder", "vae")}
    tr = LoRATrainer(pipe, config(style_dir, tmp_path, learning_rate=3e-3))
    assert {id(p) for p in tr.optim.params} == {id(p) for p in L.lora_parameters(pipe.unet)}
    assert len(tr.optim.params) == 6 * 2 * 4 * 2  # 6 transformer blocks x 2 attentions x 4 targets x (A, B)
    batch = tr.batch(0, np.random.default_rng(1))
    before = tr.compute_loss(batch, np.random.default_rng(2)).item()
    for _ in range(4):
        tr.train_step([batch], noise_seed=2)
    after = tr.compute_loss(batch, np.random.default_rng(2)).item()
    # 0.8435 -> 0.6906 (same batch, noise and timestep in training and both evaluations). The loss before
    # training is a float32 forward pass (relative rounding ~1e-6, see test_unet.py); after 4 Adam steps at
    # lr 3e-3 a rounding-level gradient change can move an update by up to lr (Adam divides by sqrt(v)),
    # so "after" is compared with a bound of ~1/3 of what one sign-flipped step costs; a broken loss or
    # optimizer moves it by 0.1 or more. Measured |diff| <= 1e-4 with and without oneDNN.
    assert_close(before, 0.8435, atol=2e-3, what="loss before training")
    assert_close(after, 0.6906, atol=2e-3, what="loss after 4 steps")
    assert after < 0.85 * before
    for c, state in base.items():  # frozen base weights: bitwise unchanged
        now = getattr(pipe, c).state_dict()
        assert all(np.array_equal(now[k].numpy(), v) for k, v in state.items()), c
    assert all(p.is_stop_grad() for p in pipe.vae.parameters())
    L.remove_lora(pipe.unet)


def test_resume_equals_uninterrupted_and_rejects_another_config(pipe, style_dir, tmp_path):
    kw = dict(max_train_steps=3, checkpointing_steps=2, learning_rate=1e-3, max_grad_norm=1.0,
              lr_scheduler="cosine", lr_warmup_steps=1, gradient_accumulation_steps=2)
    full = LoRATrainer(pipe, config(style_dir, tmp_path / "a", **kw)).train()
    LoRATrainer(pipe, config(style_dir, tmp_path / "b", **kw)).train(stop_after=2)
    assert json.loads((tmp_path / "b" / "train_log.json").read_text())["final_step"] == 2
    resumed = LoRATrainer(pipe, config(style_dir, tmp_path / "b", resume="latest", **kw)).train()
    a, b = L.read_lora_file(full), L.read_lora_file(resumed)
    diffs = [np.abs(pa.B - b.layers["unet"][n].B).max() for n, pa in a.layers["unet"].items()]
    # Every step's RNG stream is derived from (seed, step), so nothing random is lost; the last-bit
    # differences come from Jittor fusing the AdamW update with the moment update in the uninterrupted run
    # but not after loading them from the checkpoint. Adam turns a gradient change dg into an update change
    # of up to lr * dg / eps_adam (at |g| ~ eps_adam), so rounding-level gradient changes (dg ~ 1e-13 on
    # gradients ~1e-5) can cost lr * 1e-5 per step: bound steps * lr * 1e-3 (3e-6), a wrong resume (lost
    # moments, a skipped step) changes B by ~lr = 1e-3. Measured 2e-8 (|B| ~ 4e-3).
    assert_at_most(max(diffs), 3 * kw["learning_rate"] * 1e-3, "resumed vs uninterrupted LoRA B")
    la = json.loads((tmp_path / "a" / "train_log.json").read_text())["steps"]
    lb = json.loads((tmp_path / "b" / "train_log.json").read_text())["steps"]
    # the same float32 forward passes on LoRAs equal to ~1e-8: relative rounding only (~1e-6)
    assert_close([e["loss"] for e in lb], [e["loss"] for e in la], rtol=1e-5, what="resumed losses")
    assert max(np.abs(p.B).max() for p in a.layers["unet"].values()) > 0  # it did train
    log = json.loads((tmp_path / "b" / "train_log.json").read_text())
    assert [e["step"] for e in log["steps"]] == [1, 2, 3] and log["steps"][0]["lr"] == 0.0  # warmup
    with pytest.raises(ConfigError, match="differs in: learning_rate") as e:
        LoRATrainer(pipe, config(style_dir, tmp_path / "b", resume="latest", **{**kw, "learning_rate": 2e-3})).train()
    assert "\n" not in str(e.value)
    L.remove_lora(pipe.unet)


def test_gradient_checkpointing_trains_the_same_lora(pipe, style_dir, tmp_path):
    from jstyle.training.checkpointing import is_gradient_checkpointing

    kw = dict(max_train_steps=2, learning_rate=1e-3)
    plain = LoRATrainer(pipe, config(style_dir, tmp_path / "a", **kw)).train()
    tr = LoRATrainer(pipe, config(style_dir, tmp_path / "b", gradient_checkpointing=True, **kw))
    assert is_gradient_checkpointing(pipe.unet)
    a, b = L.read_lora_file(plain), L.read_lora_file(tr.train())
    diffs = [np.abs(pa.B - b.layers["unet"][n].B).max() for n, pa in a.layers["unet"].items()]
    assert max(np.abs(p.B).max() for p in a.layers["unet"].values()) > 1e-4  # it did train
    # Recomputed blocks sum in another order: gradients equal to float32 rounding (test_checkpointing.py);
    # Adam can turn that into update changes up to lr * dg / eps_adam per step (see the resume test above):
    # bound steps * lr * 1e-3 = 2e-6; a block whose gradient were lost or doubled moves B by ~lr = 1e-3.
    # Measured 1.75e-7 on an Intel Xeon (Ice Lake), see the closing table for this machine's figure.
    assert_at_most(max(diffs), 2 * kw["learning_rate"] * 1e-3, "LoRA B with vs without checkpointing")
    LoRATrainer(pipe, config(style_dir, tmp_path / "c", **kw))
    assert not is_gradient_checkpointing(pipe.unet)  # a later trainer without it turns it off
    L.remove_lora(pipe.unet)


def test_prior_preservation_loss_by_hand(pipe, style_dir, tmp_path):
    cfg = config(style_dir, tmp_path, prior_preservation=True, num_class_images=2, class_inference_steps=2,
                 prior_loss_weight=0.5, instance_template="an image of {obj} in style_{id}")
    tr = LoRATrainer(pipe, cfg)
    for layer in L.lora_layers(pipe.unet).values():  # a non-zero LoRA
        layer.lora_B.weight.assign(jt.array(np.full(layer.lora_B.weight.shape, 0.05, np.float32)))
    tr.prepare_class_images()
    assert sorted(p.name for p in (tmp_path / "class_images").glob("*.png")) == ["0000.png", "0001.png"]
    assert [e.prompt for e in tr.class_examples] == ["an image of Bread", "an image of Dolphin"]  # file order
    b = tr.batch(0, np.random.default_rng(0))
    got = tr.compute_loss(b, np.random.default_rng(3)).item()

    rng = np.random.default_rng(3)  # same draws in the same order: VAE sample, noise, timesteps
    z = tr.encode_latents(np.concatenate([b.pixels, b.class_pixels]), rng).numpy()
    noise = rng.standard_normal(z.shape).astype(np.float32)
    t = rng.integers(0, 1000, size=2)
    a = tr.scheduler.alphas_cumprod[t].reshape(-1, 1, 1, 1)
    x_t = np.sqrt(a) * z + np.sqrt(1 - a) * noise
    v = np.sqrt(a) * noise - np.sqrt(1 - a) * z  # v-prediction target
    ctx = tr.encode_text(b.prompts + b.class_prompts)
    pred = pipe.unet(jt.array(x_t.astype(np.float32)), jt.array(t), ctx).numpy()
    want = np.mean((pred[0] - v[0]) ** 2) + 0.5 * np.mean((pred[1] - v[1]) ** 2)
    # the same float32 UNet forward on the same inputs in both; the loss is a mean of squares of ~100 terms
    # of size ~1: relative rounding 100 * eps32 = 1.2e-5 at most; a wrong weight (0.5) or target is > 10%
    assert_close(got, float(want), rtol=100 * EPS32 * 10, what="prior-preservation loss")
    # the class cache is reused: a second trainer generates nothing new
    mtime = (tmp_path / "class_images" / "0000.png").stat().st_mtime_ns
    LoRATrainer(pipe, cfg).prepare_class_images()
    assert (tmp_path / "class_images" / "0000.png").stat().st_mtime_ns == mtime
    L.remove_lora(pipe.unet)


def test_adamw_matches_torch_semantics_in_numpy():
    rng = np.random.default_rng(0)
    p0 = rng.standard_normal((3, 4)).astype(np.float32)
    grads = [rng.standard_normal((3, 4)).astype(np.float32) for _ in range(3)]
    p = jt.array(p0)
    opt = AdamW([p], lr=0.1, betas=(0.9, 0.99), weight_decay=0.1, eps=1e-8)
    for g in grads:
        opt.step([jt.array(g)], lr=0.1)
    # torch.optim.AdamW: decoupled decay first, bias-corrected moments, eps added after sqrt(v_hat)
    q, m, v = p0.astype(np.float64), 0.0, 0.0
    for t, g in enumerate(grads, 1):
        q = q * (1 - 0.1 * 0.1)
        m = 0.9 * m + 0.1 * g
        v = 0.99 * v + 0.01 * g * g
        q = q - (0.1 / (1 - 0.9**t)) * m / (np.sqrt(v) / math.sqrt(1 - 0.99**t) + 1e-8)
    # 3 float32 updates of values ~1 against float64: a few roundings of size eps32 each
    assert_close(p.numpy(), q, atol=3 * 4 * EPS32 * 2, what="AdamW vs numpy float64")
    state = opt.state_dict()
    opt2 = AdamW([jt.array(p0)], lr=0.1)
    opt2.load_state_dict(state)
    assert opt2.t == 3 and np.array_equal(opt2.v[0].numpy(), opt.v[0].numpy())


def test_schedules_and_clipping():
    assert lr_at(0, 1.0, "constant", 10, 100) == 1.0  # diffusers' constant ignores warmup
    assert lr_at(5, 1.0, "constant_with_warmup", 10, 100) == 0.5
    assert lr_at(10, 1.0, "cosine", 10, 110) == 1.0
    assert_close(lr_at(60, 1.0, "cosine", 10, 110), 0.5, atol=1e-12, what="cosine at mid")  # float64 math
    assert_close(lr_at(60, 1.0, "linear", 10, 110), 0.5, atol=1e-12, what="linear at mid")
    g, norm = clip_grad_norm([jt.array(np.array([3.0, 4.0], np.float32))], 1.0)
    # sqrt(9 + 16), a division and a product in float32, then numpy's float32 norm: at most 8 roundings of
    # values <= 5 (8 eps32 relative = 9.5e-7); bounds 2x that. Measured 0 and 1.8e-7
    assert_close(norm, 5.0, atol=2 * 8 * EPS32 * 5, what="grad norm")
    assert_close(np.linalg.norm(g[0].numpy()), 1.0, atol=2 * 8 * EPS32, what="clipped norm")
    s = preset("strong", style_dir="x")
    assert (s.rank, s.max_train_steps, s.prior_preservation, s.resize_margin) == (32, 800, True, 1.04)
    assert s.text_encoder_targets == ("q_proj", "k_proj", "v_proj", "out_proj")


def test_bad_inputs_are_one_line_errors(pipe, tmp_path):
    def style(name, images=None):
        d = tmp_path / name
        if images is not None:
            (d / "images").mkdir(parents=True)
            for fname, img in images.items():
                (img.save(d / "images" / fname) if isinstance(img, Image.Image)
                 else (d / "images" / fname).write_bytes(img))
        return d

    rgba = Image.new("RGBA", (20, 20), (255, 0, 0, 0))
    cases = {
        "missing": (style("missing"), InputError, "images: missing"),
        "empty": (style("empty", {}), InputError, "no images"),
        "corrupt": (style("corrupt", {"bad.png": b"not a png"}), InputError, "bad.png: not a readable image"),
        "tiny": (style("tiny", {"t.png": Image.new("RGB", (8, 20))}), InputError, "t.png: image is 8x20"),
    }
    for name, (d, exc, match) in cases.items():
        with pytest.raises(exc, match=match) as e:
            LoRATrainer(pipe, config(d, tmp_path / "o"))
        assert "\n" not in str(e.value), name
    ok = style("ok", {"a.png": rgba, "b.jpg": Image.new("CMYK", (20, 20), (0, 255, 0, 0)),
                      "c.png": Image.new("L", (20, 20), 128)})
    imgs = [load_rgb(p) for p in sorted((ok / "images").iterdir())]
    assert all(i.shape == (20, 20, 3) and i.dtype == np.uint8 for i in imgs)
    assert tuple(imgs[0][0, 0]) == (255, 255, 255)  # transparent -> white
    assert tuple(imgs[2][0, 0]) == (128, 128, 128)
    with pytest.raises(ConfigError, match="rank"):
        config(ok, tmp_path, rank=0)
    with pytest.raises(ConfigError, match="unknown field"):
        config(ok, tmp_path, instance_template="{style}")
    with pytest.raises(JStyleError):
        LoRATrainer(pipe, config(ok, tmp_path / "o", resume=str(tmp_path / "nope"))).train()
    assert not (tmp_path / "o" / L.WEIGHT_NAME).exists()  # no LoRA file from a failed run


def test_cli_and_function_api(model_dir, style_dir, tmp_path, capsys):
    rc = main(["--model", str(model_dir), "--style-dir", str(style_dir), "--resolution", str(RES),
               "--max-train-steps", "1", "--output-dir", str(tmp_path / "cli"), "--no-progress",
               "--unet-targets", "to_q,to_out.0", "--rank", "2", "--alpha", "4", "--device", "cpu"])
    assert rc == 0
    w = L.read_lora_file(tmp_path / "cli" / L.WEIGHT_NAME)
    assert len(w.layers["unet"]) == 24 and {p.rank for p in w.layers["unet"].values()} == {2}
    assert {p.alpha for p in w.layers["unet"].values()} == {4.0}
    assert main(["--model", str(model_dir), "--style-dir", str(tmp_path / "none"), "--device", "cpu"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    with pytest.raises(JStyleError):
        train_lora(config(style_dir, tmp_path / "x"))


def test_base_stays_frozen_through_train_steps(pipe, style_dir, tmp_path):
    """LoRATrainer's train()/eval() around each step must not restart the base weights' gradients (Jittor's
    eval() recorded them as trainable when the model was loaded; see jstyle.training.freeze)."""
    tr = LoRATrainer(pipe, config(style_dir, tmp_path, gradient_checkpointing=True))
    lora = {id(p) for p in L.lora_parameters(pipe.unet)}
    tr.train_step()
    tr.train_step()
    assert all(p.is_stop_grad() for c in ("unet", "text_encoder") for p in getattr(pipe, c).parameters()
               if id(p) not in lora)
    L.remove_lora(pipe.unet)
