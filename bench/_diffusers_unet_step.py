"""Reference side of bench/unet_step.py (checker env): make the random SD2.1 folder; serve diffusers timings."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _sd21 import configs, serve  # noqa: E402


def make(folder: Path, dtype: str = "float32", device: str = "cpu") -> None:
    """The random SD2.1 unet/, vae/, text_encoder/ (initialised on `device`, saved in `dtype`; a narrow and
    shallow variant with JSTYLE_BENCH_TINY=1)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    unet_cfg, vae_cfg, text_cfg = configs(os.environ.get("JSTYLE_BENCH_TINY") == "1")
    torch.manual_seed(0)
    makers = (("unet", lambda: UNet2DConditionModel(**unet_cfg)), ("vae", lambda: AutoencoderKL(**vae_cfg)),
              ("text_encoder", lambda: CLIPTextModel(CLIPTextConfig(**text_cfg))))
    for name, new in makers:
        with torch.device(device):
            model = new()
        model.to(getattr(torch, dtype)).save_pretrained(folder / name, safe_serialization=True)
        del model
    (folder / "DONE").write_text("ok\n")


def synced(fn, device: str):
    """fn, then wait for the GPU (timings of CUDA calls are of finished work)."""
    if device != "cuda":
        return fn

    def go():
        out = fn()
        torch.cuda.synchronize()
        return out
    return go


def main(folder: Path, latent: int, parts: list[str], threads: int, device: str = "cpu",
         dtype: str = "float32") -> None:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.set_num_threads(threads)
    torch.set_grad_enabled(False)
    dt = getattr(torch, dtype)
    rng = np.random.default_rng(0)

    def t(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a).to(device, dt if a.dtype.kind == "f" else None)

    tasks = {}
    if "unet" in parts:
        unet = UNet2DConditionModel.from_pretrained(folder / "unet", dtype=dt).to(device).eval()
        x = t(rng.standard_normal((2, 4, latent, latent)).astype(np.float32))
        ctx = t(rng.standard_normal((2, 77, 1024)).astype(np.float32))
        tasks["unet"] = synced(lambda: unet(x, 500, encoder_hidden_states=ctx).sample, device)
    if "vae" in parts:
        vae = AutoencoderKL.from_pretrained(folder / "vae", dtype=dt).to(device).eval()
        z = t(rng.standard_normal((1, 4, latent, latent)).astype(np.float32))
        tasks["vae_decode"] = synced(lambda: vae.decode(z).sample, device)
    if "text" in parts:
        te = CLIPTextModel.from_pretrained(folder / "text_encoder", dtype=dt).to(device).eval()
        ids = t(rng.integers(0, 49406, (2, 77)))
        tasks["text_encode"] = synced(lambda: te(ids).last_hidden_state, device)
    serve(tasks)


if __name__ == "__main__":
    folder = Path(sys.argv[2])
    if sys.argv[1] == "make":  # make FOLDER [DTYPE [DEVICE]]
        make(folder, *sys.argv[3:5])
        print(f"random SD2.1 folder made at {folder}", flush=True)
    else:  # serve FOLDER LATENT PARTS THREADS [DEVICE DTYPE]
        main(folder, int(sys.argv[3]), sys.argv[4].split(","), int(sys.argv[5]), *sys.argv[6:8])
