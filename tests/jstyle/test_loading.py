"""The numpy-only loader: safetensors parsing (fp32/fp16/bf16), strictness, one-line errors."""

import json

import numpy as np
import pytest
from jittor import nn
from safetensors.numpy import save_file

from jstyle.errors import WeightsError
from jstyle.loading import find_weights, load_model, load_safetensors

from ..tolerance import assert_close


class Tiny(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.proj = nn.Linear(width, 3)
        self.blocks = nn.ModuleList([nn.Linear(3, 3)])

    @classmethod
    def from_config(cls, config):
        return cls(config["width"])


def write(folder, state, name="diffusion_pytorch_model.safetensors", width=4):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"width": width}))
    save_file(state, str(folder / name))
    return folder


def state(rng, width=4):
    return {
        "proj.weight": rng.standard_normal((3, width)).astype(np.float32),
        "proj.bias": rng.standard_normal(3).astype(np.float32),
        "blocks.0.weight": rng.standard_normal((3, 3)).astype(np.float32),
        "blocks.0.bias": rng.standard_normal(3).astype(np.float32),
    }


def test_roundtrip_fp32_and_fp16_variant(tmp_path):
    rng = np.random.default_rng(0)
    s = state(rng)
    d = write(tmp_path / "m", s)
    save_file({k: v.astype(np.float16) for k, v in s.items()}, str(d / "diffusion_pytorch_model.fp16.safetensors"))
    m = load_model(Tiny, d)
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(v.numpy(), s[k])
    m16 = load_model(Tiny, d, variant="fp16")  # fp16 file widened to the float32 model
    # a proof, not a noise estimate: float32 -> float16 rounds to nearest, within 2^-11 relative (normal range)
    # plus half the smallest float16 subnormal; a wrong file or a byte-order error is off by 100%
    assert_close(m16.proj.weight.numpy(), s["proj.weight"], rtol=2.0**-11, atol=2.0**-25, what="fp16 variant")
    assert str(m16.proj.weight.dtype) == "float32"


def test_bf16_is_widened(tmp_path):
    x = np.array([1.0, -2.5, 3.140625, 1e-3], dtype=np.float32)
    bf16 = (x.view(np.uint32) >> 16).astype(np.uint16)  # truncate to bfloat16 bit patterns
    header = json.dumps({"w": {"dtype": "BF16", "shape": [4], "data_offsets": [0, 8]}}).encode()
    path = tmp_path / "bf16.safetensors"
    path.write_bytes(len(header).to_bytes(8, "little") + header + bf16.tobytes())
    out = load_safetensors(path)["w"]
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, (bf16.astype(np.uint32) << 16).view(np.float32))
    assert_close(out, x, rtol=2.0**-7, what="bf16")  # a proof: truncating to 8 mantissa bits loses < 2^-7 relative


def test_truncated_file_is_one_line(tmp_path):
    d = write(tmp_path / "m", state(np.random.default_rng(0)))
    f = d / "diffusion_pytorch_model.safetensors"
    f.write_bytes(f.read_bytes()[:-10])
    with pytest.raises(WeightsError, match="truncated") as e:
        load_model(Tiny, d)
    assert "\n" not in str(e.value)


def test_pickle_is_refused_with_the_fix(tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    (d / "config.json").write_text("{}")
    (d / "diffusion_pytorch_model.bin").write_bytes(b"\x80\x02")
    with pytest.raises(WeightsError, match="convert_to_safetensors.py"):
        find_weights(d)


def test_missing_unexpected_misshaped_keys(tmp_path):
    rng = np.random.default_rng(0)
    s = state(rng)
    s.pop("blocks.0.bias")
    s["extra.weight"] = np.zeros(2, np.float32)
    s["proj.weight"] = np.zeros((3, 5), np.float32)
    with pytest.raises(WeightsError) as e:
        load_model(Tiny, write(tmp_path / "m", s))
    msg = str(e.value)
    assert "1 missing (e.g. blocks.0.bias)" in msg and "1 unexpected (e.g. extra.weight)" in msg
    assert "proj.weight (3, 5) vs model (3, 4)" in msg and "\n" not in msg


def test_missing_variant_names_what_exists(tmp_path):
    d = write(tmp_path / "m", state(np.random.default_rng(0)))
    with pytest.raises(WeightsError, match="found diffusion_pytorch_model.safetensors"):
        find_weights(d, variant="fp16")


def test_sharded_index(tmp_path):
    rng = np.random.default_rng(1)
    s = state(rng)
    d = tmp_path / "m"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"width": 4}))
    a = {k: v for k, v in s.items() if k.startswith("proj")}
    b = {k: v for k, v in s.items() if k.startswith("blocks")}
    save_file(a, str(d / "model-00001-of-00002.safetensors"))
    save_file(b, str(d / "model-00002-of-00002.safetensors"))
    wm = {k: "model-00001-of-00002.safetensors" for k in a} | {k: "model-00002-of-00002.safetensors" for k in b}
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": wm}))
    m = load_model(Tiny, d)
    np.testing.assert_array_equal(m.blocks[0].weight.numpy(), s["blocks.0.weight"])
