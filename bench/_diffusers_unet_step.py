"""Reference side of bench/unet_step.py (checker env): make the random SD2.1 folder; serve diffusers timings."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _sd21 import TEXT, UNET, VAE, serve  # noqa: E402


def make(folder: Path) -> None:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    for name, model in (("unet", UNet2DConditionModel(**UNET)), ("vae", AutoencoderKL(**VAE)),
                        ("text_encoder", CLIPTextModel(CLIPTextConfig(**TEXT)))):
        model.save_pretrained(folder / name, safe_serialization=True)
        del model
    (folder / "DONE").write_text("ok\n")


def main(folder: Path, latent: int, parts: list[str], threads: int) -> None:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.set_num_threads(threads)
    torch.set_grad_enabled(False)
    rng = np.random.default_rng(0)
    tasks = {}
    if "unet" in parts:
        unet = UNet2DConditionModel.from_pretrained(folder / "unet").eval()
        x = torch.from_numpy(rng.standard_normal((2, 4, latent, latent)).astype(np.float32))
        ctx = torch.from_numpy(rng.standard_normal((2, 77, 1024)).astype(np.float32))
        tasks["unet"] = lambda: unet(x, 500, encoder_hidden_states=ctx).sample
    if "vae" in parts:
        vae = AutoencoderKL.from_pretrained(folder / "vae").eval()
        z = torch.from_numpy(rng.standard_normal((1, 4, latent, latent)).astype(np.float32))
        tasks["vae_decode"] = lambda: vae.decode(z).sample
    if "text" in parts:
        te = CLIPTextModel.from_pretrained(folder / "text_encoder").eval()
        ids = torch.from_numpy(rng.integers(0, 49406, (2, 77)))
        tasks["text_encode"] = lambda: te(ids).last_hidden_state
    serve(tasks)


if __name__ == "__main__":
    folder = Path(sys.argv[2])
    if sys.argv[1] == "make":
        make(folder)
    else:  # serve FOLDER LATENT PARTS THREADS
        main(folder, int(sys.argv[3]), sys.argv[4].split(","), int(sys.argv[5]))
