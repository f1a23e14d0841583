"""Reference side of bench/txt2img.py (checker env): a whole StableDiffusionPipeline generation."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _sd21 import serve  # noqa: E402


def main(folder: Path, latent: int, steps: int, threads: int, device: str = "cpu", dtype: str = "float32") -> None:
    from diffusers import StableDiffusionPipeline

    torch.set_num_threads(threads)
    dt = getattr(torch, dtype)
    pipe = StableDiffusionPipeline.from_pretrained(folder, dtype=dt, safety_checker=None).to(device)
    pipe.set_progress_bar_config(disable=True)
    latents = torch.from_numpy(np.random.default_rng(0).standard_normal((1, 4, latent, latent)).astype(np.float32))
    latents = latents.to(device, dt)

    def run():
        images = pipe("a photo of a dolphin", num_inference_steps=steps, guidance_scale=7.5, height=8 * latent,
                      width=8 * latent, latents=latents.clone(), output_type="np").images
        if device == "cuda":
            torch.cuda.synchronize()
        return images

    serve({"txt2img": run})


if __name__ == "__main__":  # FOLDER LATENT STEPS THREADS [DEVICE DTYPE]
    main(Path(sys.argv[1]), *(int(a) for a in sys.argv[2:5]), *sys.argv[5:7])
