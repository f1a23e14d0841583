"""Bring your baseline LoRAs: a pickled LoRA written as JDiffusion's train.py writes it (and a PEFT
adapter_model.bin), converted by scripts/convert_to_safetensors.py in the checker env, loads in jstyle with
the same tensors on the same modules (to_out.0 included) and the UNet output diffusers gives with it.

The torch side is tests/reference/lora_bin.py (tiny sd1, peft + save_lora_weights(safe_serialization=False)).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from types import SimpleNamespace

import jittor as jt
import numpy as np
import pytest

from jstyle import lora as L
from jstyle.errors import WeightsError
from jstyle.loading import load_model
from jstyle.models.unet_2d_condition import UNet2DConditionModel

from ..tolerance import UNET_ATOL, assert_close
from .conftest import cache_dir, run_reference

ROOT = Path(__file__).resolve().parents[2]
LORA_BIN = ROOT / "tests" / "reference" / "lora_bin.py"
CONVERT = ROOT / "scripts" / "convert_to_safetensors.py"
N_MODULES = 48  # tiny sd1: 6 transformer blocks x 2 attentions x 4 projections (no add_k_proj / add_v_proj)


@pytest.fixture(scope="module")
def bins(tiny_ref, tmp_path_factory) -> Path:
    """The pickles, converted; cached per machine by the two scripts' hash."""
    key = hashlib.sha256(LORA_BIN.read_bytes() + CONVERT.read_bytes()).hexdigest()[:12]
    out = cache_dir(tmp_path_factory, f"lora-bin-{key}")
    if not (out / "DONE").exists():
        out.mkdir(parents=True, exist_ok=True)
        run_reference(LORA_BIN, str(tiny_ref / "sd1"), str(out))
        assert "wrote" in run_reference(CONVERT, str(out / "jdiffusion" / "pytorch_lora_weights.bin"))
        assert "adapter_model.safetensors" in run_reference(CONVERT, str(out / "peft"))
        (out / "DONE").write_text("")
    return out


@pytest.mark.parametrize("layout", ["jdiffusion", "peft"])
def test_converted_bin_lora_lands_with_the_same_tensors(layout, bins, tiny_ref, refs):
    with np.load(bins / "originals.npz") as f:
        orig = dict(f)
    modules = sorted({k.rsplit(".lora_", 1)[0] for k in orig if ".lora_" in k})
    assert len(modules) == N_MODULES and sum(m.endswith(".to_out.0") for m in modules) == 12
    pickle = bins / {"jdiffusion": "jdiffusion/pytorch_lora_weights.bin", "peft": "peft/adapter_model.bin"}[layout]
    with pytest.raises(WeightsError, match="only .safetensors"):  # the pickle itself stays refused
        L.read_lora_file(pickle)

    weights = L.read_lora_file(pickle.with_suffix(".safetensors"))
    assert set(weights.layers) == {"unet"} and sorted(weights.layers["unet"]) == modules
    for name, p in weights.layers["unet"].items():  # float32 through safetensors: bit for bit
        assert np.array_equal(p.A, orig[f"{name}.lora_A.weight"]) and np.array_equal(p.B, orig[f"{name}.lora_B.weight"])
    assert {p.alpha for p in weights.layers["unet"].values()} == {4.0}  # train.py: lora_alpha = rank = 4

    unet = load_model(UNet2DConditionModel, tiny_ref / "sd1" / "unet")
    assert L.apply_lora(SimpleNamespace(unet=unet), weights) == {"unet": 2 * N_MODULES}
    landed = L.lora_layers(unet)
    assert sorted(landed) == modules  # the same modules diffusers wrapped, to_out.0 included
    for name, layer in landed.items():
        assert np.array_equal(layer.lora_A.weight.numpy(), orig[f"{name}.lora_A.weight"])
        assert np.array_equal(layer.lora_B.weight.numpy(), orig[f"{name}.lora_B.weight"])
    r = refs("sd1")
    got = unet(jt.array(r["unet_sample"]), jt.array(r["unet_timesteps"]), jt.array(r["unet_context"])).numpy()
    # float32 UNet of the same weights as diffusers': UNET_ATOL (tests/tolerance.py), as test_lora.py
    assert_close(got, orig["out:unet"], atol=UNET_ATOL, what=f"UNet with the converted {layout} LoRA")
