"""LoRA layers, injection, scale/fuse/unfuse/switch, files, and interop with diffusers + peft.

The torch side is tests/reference/lora_interop.py, run in the checker env: it makes a LoRA with peft on
the tiny SD1 model (diffusers, PEFT and kohya layouts) and loads a jstyle-made LoRA with
`pipe.load_lora_weights`, counting the tensors that really landed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from types import SimpleNamespace

import jittor as jt
import numpy as np
import pytest
from jittor import nn

from jstyle import lora as L
from jstyle.errors import ConfigError, JStyleError, WeightsError
from jstyle.loading import load_model
from jstyle.models.clip_text import CLIPTextModel
from jstyle.models.unet_2d_condition import UNet2DConditionModel

from ..tolerance import UNET_ATOL, assert_at_most, assert_close, f32_bound
from .conftest import cache_dir, run_reference

INTEROP = Path(__file__).resolve().parents[1] / "reference" / "lora_interop.py"
# float32 UNet/text outputs of the same weights: UNET_ATOL (3.4e-4, the larger of the UNet and text bounds,
# tests/tolerance.py); measured max abs diff ~7e-6 (outputs of size ~2-4)
ATOL = UNET_ATOL
N_UNET_TENSORS = 96  # tiny sd1: 6 transformer blocks x 2 attentions x 4 projections x (A, B)
N_TEXT_TENSORS = 24  # 3 layers x 4 projections x (A, B)


def _run_checker(*args: str) -> str:
    return run_reference(INTEROP, *args)


@pytest.fixture(scope="module")
def peft_made(tiny_ref, tmp_path_factory) -> Path:
    """LoRA made by peft/diffusers on tiny sd1, cached per machine by the script's hash."""
    out = cache_dir(tmp_path_factory, f"lora-{hashlib.sha256(INTEROP.read_bytes()).hexdigest()[:12]}")
    if not (out / "outputs.npz").exists():
        out.mkdir(parents=True, exist_ok=True)
        _run_checker("make", str(tiny_ref / "sd1"), str(out))
    return out


@pytest.fixture()
def pipe(tiny_ref):
    """UNet + text encoder of tiny sd1 (fresh per test: LoRA mutates them)."""
    return SimpleNamespace(
        unet=load_model(UNet2DConditionModel, tiny_ref / "sd1" / "unet"),
        text_encoder=load_model(CLIPTextModel, tiny_ref / "sd1" / "text_encoder"),
    )


def unet_out(unet, r) -> np.ndarray:
    return unet(jt.array(r["unet_sample"]), jt.array(r["unet_timesteps"]), jt.array(r["unet_context"])).numpy()


def text_out(te, r) -> np.ndarray:
    return te(jt.array(r["input_ids"])).last_hidden_state.numpy()


def randomize_b(model, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for layer in L.lora_layers(model).values():
        w = layer.lora_B.weight
        w.assign(jt.array((0.2 * rng.standard_normal(w.shape)).astype(np.float32)))


# ---------------------------------------------------------------- layers


def test_linear_and_conv_layers_match_the_formula():
    rng = np.random.default_rng(0)
    lin = nn.Linear(6, 5)
    x = rng.standard_normal((2, 3, 6)).astype(np.float32)
    base = lin(jt.array(x)).numpy()
    layer = L.LoRALinear(lin, rank=2, alpha=3.0)
    a = L.init_lora_a((2, 6), "kaiming", rng)
    assert np.abs(a).max() <= 1 / np.sqrt(6)
    b = rng.standard_normal((5, 2)).astype(np.float32)
    layer.lora_B.weight.assign(jt.array(np.zeros((5, 2), np.float32)))
    layer.lora_A.weight.assign(jt.array(a))
    assert np.array_equal(layer(jt.array(x)).numpy(), base)  # B = 0: exactly the base layer
    layer.lora_B.weight.assign(jt.array(b))
    layer.scale = 0.5
    want = base + 0.5 * (3.0 / 2) * x @ a.T @ b.T  # y = Wx + b + scale * alpha/r * B A x
    assert_close(layer(jt.array(x)).numpy(), want, atol=1e-5)  # 2-term products in float32; measured 6e-8

    conv = nn.Conv2d(3, 4, 3, stride=2, padding=1)
    xc = rng.standard_normal((1, 3, 7, 7)).astype(np.float32)
    cbase = conv(jt.array(xc)).numpy()
    cl = L.LoRAConv2d(conv, rank=2, alpha=2.0)
    cl.lora_A.weight.assign(jt.array(L.init_lora_a((2, 3, 3, 3), "gaussian", rng)))
    cl.lora_B.weight.assign(jt.array(rng.standard_normal((4, 2, 1, 1)).astype(np.float32)))
    delta = nn.Conv2d(3, 4, 3, stride=2, padding=1, bias=False)
    delta.weight.assign(jt.array(cl.delta_weight()))  # (alpha/r) * B @ A as one 3x3 kernel
    # the LoRA branch (3x3 conv, 27 terms, then a 1x1 over rank 2) vs one fused 3x3 kernel, plus the base:
    # float32 rounding of ~2 x 27 terms on outputs up to |want|; measured 1.4e-6
    want_c = cbase + delta(jt.array(xc)).numpy()
    assert_close(cl(jt.array(xc)).numpy(), want_c, atol=f32_bound(2 * 27, np.abs(want_c).max()), what="conv LoRA")
    with pytest.raises(ConfigError):
        L.LoRALinear(nn.Linear(2, 2), rank=0, alpha=1.0)


def test_gaussian_init_std_is_one_over_rank():
    a = L.init_lora_a((8, 4000), "gaussian", np.random.default_rng(0))
    # The sample std of n = 32000 normal draws has a standard error of sigma / sqrt(2n) = 4.9e-4: the bound is 4
    # of them. The draws come from numpy's seeded PCG64, the same on every machine, so the measured 3.9e-4 is
    # too; a wrong init (std 1/4, 1/sqrt(8)) is off by > 0.1.
    assert_at_most(abs(a.std() - 1 / 8), 4 * (1 / 8) / np.sqrt(2 * a.size), "std of A")


# ---------------------------------------------------------------- injection, scale, fuse, switch


def test_inject_keeps_base_weights_and_names(pipe, refs):
    unet, r = pipe.unet, refs("sd1")
    before = {k: v.numpy().copy() for k, v in unet.state_dict().items()}
    base = unet_out(unet, r)
    names = L.inject_lora(unet, L.default_targets("unet", unet), rank=4, rng=np.random.default_rng(0))
    assert len(names) == N_UNET_TENSORS // 2
    assert sum(n.endswith("to_out.0") for n in names) == 12  # to_out.0 inside a ModuleList is wrapped too
    after = unet.state_dict()
    assert set(after) - set(before) == {f"{n}.lora_{w}.weight" for n in names for w in "AB"}
    assert all(np.array_equal(after[k].numpy(), v) for k, v in before.items())
    assert np.array_equal(unet_out(unet, r), base)  # B starts at zero
    assert len(L.lora_parameters(unet)) == N_UNET_TENSORS
    with pytest.raises(ConfigError, match="already has LoRA"):
        L.inject_lora(unet, ["to_q"])
    assert L.remove_lora(unet) == len(names)
    assert set(unet.state_dict()) == set(before)
    with pytest.raises(ConfigError, match="rank"):
        L.inject_lora(unet, ["to_q"], rank=0)
    with pytest.raises(ConfigError, match="matches no module"):
        L.inject_lora(unet, ["to_qq"])
    with pytest.raises(ConfigError, match="only Linear and Conv2d"):
        L.inject_lora(unet, ["norm1"])


def test_scale_fuse_unfuse_and_switch(pipe, refs, tmp_path):
    unet, r = pipe.unet, refs("sd1")
    base = unet_out(unet, r)
    files = []
    for seed in (1, 2):
        L.inject_lora(unet, ["to_q", "to_k", "to_v", "to_out.0"], rank=4, alpha=8.0, rng=np.random.default_rng(seed))
        randomize_b(unet, seed)
        files.append(L.save_lora(tmp_path / f"style{seed}", {"unet": unet}))
        L.remove_lora(unet)
    L.apply_lora(pipe, files[0])
    out1 = unet_out(unet, r)
    assert np.abs(out1 - base).max() > 0.05
    L.set_lora_scale(unet, 0.0)
    assert np.array_equal(unet_out(unet, r), base)
    L.set_lora_scale(unet, 1.0)
    assert L.fuse_lora(unet) == N_UNET_TENSORS // 2
    assert_close(unet_out(unet, r), out1, atol=ATOL)
    with pytest.raises(ConfigError, match="fused"):
        L.set_lora_scale(unet, 0.5)
    L.unfuse_lora(unet)
    assert np.array_equal(unet_out(unet, r), out1)  # unfuse restores the exact weights
    # switching styles: the second LoRA replaces the first, the base model is never reloaded
    L.fuse_lora(unet)
    counts = L.apply_lora(pipe, files[1], scale=0.7)
    assert counts == {"unet": N_UNET_TENSORS}
    out2 = unet_out(unet, r)
    L.remove_lora(unet)
    assert np.array_equal(unet_out(unet, r), base)
    L.apply_lora(pipe, files[1], scale=0.7)
    assert np.array_equal(unet_out(unet, r), out2)


# ---------------------------------------------------------------- files


def test_save_is_atomic_and_bad_files_are_one_line_errors(pipe, tmp_path, monkeypatch):
    unet = pipe.unet
    L.inject_lora(unet, ["to_q"], rank=2)
    import safetensors.numpy

    def boom(*a, **k):
        Path(a[1]).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.numpy, "save_file", boom)
    with pytest.raises(OSError):
        L.save_lora(tmp_path / "x.safetensors", {"unet": unet})
    assert list(tmp_path.iterdir()) == []  # no half-written file, no temp file
    monkeypatch.undo()
    path = L.save_lora(tmp_path / "x.safetensors", {"unet": unet})

    from safetensors.numpy import load_file, save_file

    data = load_file(str(path))
    bad = tmp_path / "bad"
    bad.mkdir()
    save_file({**data, "unet.conv_in.weight": np.zeros(3, np.float32)}, str(bad / "a.safetensors"))
    key = next(k for k in data if "lora_B" in k)
    save_file({k: v for k, v in data.items() if k != key}, str(bad / "b.safetensors"))
    save_file({k.replace("to_q", "to_z"): v for k, v in data.items()}, str(bad / "c.safetensors"))
    save_file({k: (v[:, :3] if "lora_A" in k else v) for k, v in data.items()}, str(bad / "d.safetensors"))
    (bad / "e.ckpt").write_bytes(b"x")
    for name, match in (("a.safetensors", "not LoRA keys"), ("b.safetensors", "no lora_B"),
                        ("c.safetensors", "name no module"), ("d.safetensors", "another model"),
                        ("e.ckpt", "only .safetensors"), ("missing.safetensors", "not found")):
        with pytest.raises(WeightsError, match=match) as e:
            L.apply_lora(pipe, bad / name)
        assert "\n" not in str(e.value) and isinstance(e.value, JStyleError)


# ---------------------------------------------------------------- interop with diffusers + peft


@pytest.mark.parametrize("layout", ["diffusers", "peft", "kohya"])
def test_peft_made_lora_loads_with_the_same_outputs(layout, peft_made, pipe, refs):
    r = refs("sd1")
    ref = np.load(peft_made / "outputs.npz")
    path = {"diffusers": peft_made / "diffusers", "peft": peft_made / "peft",
            "kohya": peft_made / "kohya.safetensors"}[layout]
    weights = L.read_lora_file(path)
    counts = L.apply_lora(pipe, weights)
    assert counts["unet"] == int(ref["n_unet"]) == N_UNET_TENSORS
    assert {p.alpha for p in weights.layers["unet"].values()} == {8.0}  # alpha != rank, from the file
    assert_close(unet_out(pipe.unet, r), ref["unet_out"], atol=ATOL)
    if layout != "peft":  # the PEFT folder holds the UNet adapter only
        assert counts["text_encoder"] == int(ref["n_text"]) == N_TEXT_TENSORS
        assert {p.alpha for p in weights.layers["text_encoder"].values()} == {3.0}
        assert_close(text_out(pipe.text_encoder, r), ref["text_out"], atol=ATOL)
    if layout == "kohya":  # diffusers' own reading of the same kohya file agrees
        assert_close(ref["unet_out_kohya_diffusers"], ref["unet_out"], atol=1e-6)


def test_jstyle_lora_loads_in_diffusers(pipe, refs, tiny_ref, tmp_path):
    r = refs("sd1")
    L.inject_lora(pipe.unet, L.default_targets("unet"), rank=4, alpha=8.0, rng=np.random.default_rng(3))
    L.inject_lora(pipe.text_encoder, L.DEFAULT_TARGETS["text_encoder"], rank=2, rng=np.random.default_rng(4))
    randomize_b(pipe.unet, 5)
    randomize_b(pipe.text_encoder, 6)
    path = L.save_lora(tmp_path / "lora", {"unet": pipe.unet, "text_encoder": pipe.text_encoder})
    out = tmp_path / "diffusers.npz"
    counts = json.loads(_run_checker("check", str(tiny_ref / "sd1"), str(path), str(out)).strip().splitlines()[-1])
    # every tensor of the file landed in a diffusers LoRA parameter with the same value (to_out.0 too)
    assert counts == {"n_file": 120, "n_loaded": 120, "n_model_lora": 120}
    ref = np.load(out)
    assert_close(unet_out(pipe.unet, r), ref["unet_out"], atol=ATOL)
    assert_close(text_out(pipe.text_encoder, r), ref["text_out"], atol=ATOL)
    L.set_lora_scale(pipe.unet, 0.5)
    assert_close(unet_out(pipe.unet, r), ref["unet_out_scale05"], atol=ATOL)
    L.set_lora_scale(pipe.unet, 1.0)
    L.fuse_lora(pipe.unet)
    assert_close(unet_out(pipe.unet, r), ref["unet_out_fused"], atol=ATOL)
