"""scripts/train_demo_model.py runs end to end (checker env, torch) and is deterministic from its seed:
a two-step training writes the diffusers folder and its record, byte-identical on a second run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ARGS = ["--seed", "0", "--threads", "1", "--images", "16", "--any-colour-images", "8", "--vae-steps", "1",
        "--unet-steps", "1", "--batch", "2"]
WEIGHTS = ("unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
           "text_encoder/model.safetensors")


def _train(out: Path) -> None:
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "train_demo_model.py"), "--out", str(out), *ARGS],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]


def test_train_demo_model_writes_a_deterministic_diffusers_folder(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    _train(a)
    _train(b)
    for part in ("model_index.json", "scheduler/scheduler_config.json", "tokenizer/vocab.json", *WEIGHTS):
        assert (a / part).is_file(), part
    record = json.loads((a / "training.json").read_text())
    assert (record["seed"], record["images"], record["vae_steps"], record["unet_steps"], record["batch"]) == \
        (0, 16, 1, 1, 2)
    assert record["command"].endswith(" ".join(ARGS))
    for part in WEIGHTS:  # same seed and thread count -> the same bytes
        assert (a / part).read_bytes() == (b / part).read_bytes(), part
