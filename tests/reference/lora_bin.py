"""Pickled LoRA files as JDiffusion and PEFT write them, the torch side (checker env, never jstyle's).

    python tests/reference/lora_bin.py BASE OUT

BASE is a tiny diffusers SD folder (tests/reference/make_tiny.py) with its `<kind>_refs.npz` beside it.
OUT/jdiffusion/pytorch_lora_weights.bin is written as JittorRepos/JDiffusion examples/dreambooth/train.py
(commit f10e14b) writes it: `LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
target_modules=["to_k", "to_q", "to_v", "to_out.0", "add_k_proj", "add_v_proj"])`, `unet.add_adapter`,
`convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))`, `save_lora_weights(...,
text_encoder_lora_layers=None, safe_serialization=False)`; rank 4 is train.py's default (train_all.sh
passes no --rank). OUT/peft/ is `PeftModel.save_pretrained(..., safe_serialization=False)` of the same
weights (adapter_model.bin + adapter_config.json). OUT/originals.npz holds every LoRA tensor under its
PEFT name (`<module>.lora_A.weight`) and the UNet output with the LoRA applied (`out:unet`).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel
from diffusers.utils import convert_state_dict_to_diffusers
from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
from peft.utils import get_peft_model_state_dict

TARGETS = ["to_k", "to_q", "to_v", "to_out.0", "add_k_proj", "add_v_proj"]  # train.py's list
RANK = 4


def config() -> LoraConfig:
    return LoraConfig(r=RANK, lora_alpha=RANK, init_lora_weights="gaussian", target_modules=TARGETS)


def main(base: Path, out: Path) -> None:
    refs = dict(np.load(base.parent / f"{base.name}_refs.npz"))
    unet = UNet2DConditionModel.from_pretrained(base / "unet")
    unet.add_adapter(config())
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # non-zero B everywhere (train.py's B starts at zero, which would test nothing)
        for name, p in unet.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    peft_sd = get_peft_model_state_dict(unet)
    StableDiffusionPipeline.save_lora_weights(
        save_directory=out / "jdiffusion", unet_lora_layers=convert_state_dict_to_diffusers(peft_sd),
        text_encoder_lora_layers=None, safe_serialization=False,
    )
    with torch.no_grad():
        unet_out = unet(torch.from_numpy(refs["unet_sample"]), torch.from_numpy(refs["unet_timesteps"]),
                        encoder_hidden_states=torch.from_numpy(refs["unet_context"])).sample.numpy()

    peft_unet = get_peft_model(UNet2DConditionModel.from_pretrained(base / "unet"), config())
    result = set_peft_model_state_dict(peft_unet, {f"base_model.model.{k}": v for k, v in peft_sd.items()})
    assert not [k for k in result.unexpected_keys if "lora" in k], result.unexpected_keys
    peft_unet.save_pretrained(out / "peft", safe_serialization=False)

    np.savez(out / "originals.npz", **{k: v.numpy() for k, v in peft_sd.items()}, **{"out:unet": unet_out})


if __name__ == "__main__":
    torch.set_num_threads(2)
    main(Path(sys.argv[1]), Path(sys.argv[2]))
