"""Reference side of bench/train_step.py (checker env): one LoRA training step with diffusers + peft."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _sd21 import device_memory_mb, emit, peak_rss_mb, timed  # noqa: E402

TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def main(folder: Path, latent: int, repeats: int, threads: int, checkpointing: bool, device: str = "cpu",
         dtype: str = "float32") -> None:
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig

    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    dt = getattr(torch, dtype)
    unet = UNet2DConditionModel.from_pretrained(folder / "unet", dtype=dt).to(device)
    unet.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian", target_modules=TARGETS))
    for p in unet.parameters():  # diffusers' cast_training_params: trainable LoRA weights in float32
        if p.requires_grad:
            p.data = p.data.float()
    if checkpointing:
        unet.enable_gradient_checkpointing()
    unet.train()
    params = [p for p in unet.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
    x = torch.from_numpy(rng.standard_normal((1, 4, latent, latent)).astype(np.float32)).to(device, dt)
    ctx = torch.from_numpy(rng.standard_normal((1, 77, 1024)).astype(np.float32)).to(device, dt)
    target = torch.from_numpy(rng.standard_normal((1, 4, latent, latent)).astype(np.float32)).to(device)

    def step():
        loss = torch.nn.functional.mse_loss(unet(x, 500, encoder_hidden_states=ctx).sample.float(), target)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        return loss

    result = {"side": "diffusers+peft", "torch": torch.__version__, "threads": threads,
              "lora_params": sum(p.numel() for p in params), "train_step": timed(step, repeats)}
    result["peak_rss_mb"] = peak_rss_mb()
    result.update(device_memory_mb())
    emit(result)


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5] == "1", *sys.argv[6:8])
