"""Weights come only from local paths; real-weight loaders give the same numbers as the models
they were saved from; a missing or wrong file is one clear error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from checker.clip_iqa import build_clip_rn50
from checker.clip_r import build_clip, build_tokenizer
from checker.dino import DinoEmbedder, build_dino
from checker.errors import CheckerError
from checker.fid import build_inception
from checker.lpips import build_lpips
from checker.weights import SLOTS, load_state_dict_file, resolve_weights
from tests.tolerance import assert_close

ALL = ["dino", "clip", "clip_rn50", "squeezenet", "lpips_heads", "inception"]


def test_missing_weights_name_every_file(tmp_path: Path) -> None:
    with pytest.raises(CheckerError) as err:
        resolve_weights(ALL, tmp_path, env={})
    msg = str(err.value)
    for slot in ("dino", "clip", "clip_rn50", "squeezenet", "inception"):
        assert str(tmp_path / SLOTS[slot].names[0]) in msg and SLOTS[slot].flag in msg and SLOTS[slot].env in msg
    assert "lpips_heads" not in msg  # optional: shipped in the wheel
    assert "--random-weights" in msg


def test_weight_precedence(tmp_path: Path) -> None:
    (tmp_path / "dinov2-base").mkdir()
    other = tmp_path / "elsewhere"
    other.mkdir()
    env = {"JSTYLE_CHECKER_WEIGHTS": str(tmp_path)}
    assert resolve_weights(["dino"], None, env=env)["dino"] == tmp_path / "dinov2-base"
    assert resolve_weights(["dino"], None, env={**env, "JSTYLE_CHECKER_DINO": str(other)})["dino"] == other
    assert resolve_weights(["dino"], None, {"dino": tmp_path}, env={**env, "JSTYLE_CHECKER_DINO": str(other)})["dino"] \
        == tmp_path
    with pytest.raises(CheckerError, match="--dino-weights"):
        resolve_weights(["dino"], None, {"dino": tmp_path / "nope"}, env={})
    assert resolve_weights(["lpips_heads"], tmp_path, env={})["lpips_heads"] is None


def test_dino_loads_from_hf_folder(dino_model, tmp_path: Path) -> None:
    dino_model.save_pretrained(tmp_path / "dinov2-base")
    loaded = build_dino(tmp_path / "dinov2-base")
    img = [np.random.default_rng(0).integers(0, 256, (64, 80, 3), dtype=np.uint8)]
    cpu = torch.device("cpu")
    # Bit-exact: safetensors round-trips the float32 bits, then the same Dinov2Model code runs the same input at
    # the same batch size (deterministic CPU kernels); measured 0 here (AMD EPYC, 2 cores); other machine: not
    # measured. A key mismatch leaves a layer random: O(1).
    assert_close(DinoEmbedder(loaded, cpu, 1)(img).numpy(), DinoEmbedder(dino_model, cpu, 1)(img).numpy(),
                 atol=0, what="dino reloaded vs original")
    with pytest.raises(CheckerError, match="config.json"):
        build_dino(tmp_path)


def test_clip_folder_checks_architecture_and_tokenizer(clip_tokenizer, tmp_path: Path) -> None:
    from transformers import CLIPConfig, CLIPModel

    small = CLIPModel(CLIPConfig(text_config=dict(hidden_size=32, intermediate_size=37, num_attention_heads=2,
                                                  num_hidden_layers=1, projection_dim=16),
                                 vision_config=dict(hidden_size=32, intermediate_size=37, num_attention_heads=2,
                                                    num_hidden_layers=1, patch_size=8, image_size=32,
                                                    projection_dim=16), projection_dim=16))
    small.save_pretrained(tmp_path)
    clip_tokenizer.save_pretrained(tmp_path)
    with pytest.raises(CheckerError, match="not CLIP ViT-L/14"):
        build_clip(tmp_path)
    tok = build_tokenizer(tmp_path)
    assert tok(["teddy bear", "Dolphin"])["input_ids"] == clip_tokenizer(["teddy bear", "Dolphin"])["input_ids"]


def test_lpips_backbone_from_torchvision_state_dict(lpips_net, tmp_path: Path) -> None:
    from torchvision.models import squeezenet1_1

    tv = squeezenet1_1(weights=None)
    tv.features.load_state_dict(lpips_net.features.state_dict())
    torch.save(tv.state_dict(), tmp_path / "squeezenet1_1.pth")
    net = build_lpips(tmp_path / "squeezenet1_1.pth", None)
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    for a, b in zip(net.layer_features(x), lpips_net.layer_features(x)):
        # Bit-exact: load_state_dict copies the bits; same ops, same input; measured 0 (AMD EPYC, 2 cores)
        assert_close(a.detach().numpy(), b.detach().numpy(), atol=0, what="squeezenet reloaded")
    with pytest.raises(CheckerError, match="squeezenet1_1"):
        torch.save({"features.0.weight": torch.zeros(1)}, tmp_path / "bad.pth")
        build_lpips(tmp_path / "bad.pth", None)


def test_clip_rn50_from_state_dict_and_wrong_file(rn50, tmp_path: Path) -> None:
    torch.save(rn50.state_dict(), tmp_path / "clip_rn50.pt")
    loaded = build_clip_rn50(tmp_path / "clip_rn50.pt")
    for (k, a), b in zip(rn50.state_dict().items(), loaded.state_dict().values()):
        assert_close(a.numpy(), b.numpy(), atol=0, what=f"rn50 {k}")  # torch.save/load keeps the bits
    torch.save({"conv.weight": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(CheckerError, match="not a CLIP RN50"):
        build_clip_rn50(tmp_path / "other.pt")


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_torchscript_archive_is_read_as_state_dict(tmp_path: Path) -> None:
    mod = torch.jit.script(torch.nn.Linear(3, 2))
    mod.save(str(tmp_path / "m.pt"))
    sd = load_state_dict_file(tmp_path / "m.pt", "test weights")
    assert_close(sd["weight"].numpy(), mod.weight.detach().numpy(), atol=0, what="torchscript")  # bits kept
    (tmp_path / "junk.pt").write_bytes(b"nope")
    with pytest.raises(CheckerError, match="junk.pt"):
        load_state_dict_file(tmp_path / "junk.pt", "test weights")


def test_inception_wrong_file(tmp_path: Path) -> None:
    torch.save({"fc.weight": torch.zeros(2)}, tmp_path / "x.pth")
    with pytest.raises(CheckerError, match="not an FID Inception"):
        build_inception(tmp_path / "x.pth")
