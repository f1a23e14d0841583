"""LoRA interop with diffusers + peft, the torch side (runs in the checker env, never jstyle's).

    python tests/reference/lora_interop.py make  BASE OUT     # peft-made LoRA in 3 layouts + outputs
    python tests/reference/lora_interop.py check BASE LORA OUT.npz   # diffusers loads a jstyle LoRA

BASE is a tiny diffusers SD folder (tests/reference/make_tiny.py), with its `<kind>_refs.npz` beside it
(UNet inputs unet_sample / unet_timesteps / unet_context, text input_ids).

make writes OUT/diffusers/pytorch_lora_weights.safetensors (StableDiffusionPipeline.save_lora_weights
with adapter metadata: UNet r=4 alpha=8, text encoder r=2 alpha=3), OUT/peft/ (PeftModel.save_pretrained
of the UNet LoRA: adapter_model.safetensors + adapter_config.json), OUT/kohya.safetensors (the same
weights under kohya names with .alpha tensors) and OUT/outputs.npz (UNet and text-encoder outputs with
the LoRA, and the UNet output diffusers gets after loading the kohya file).
check loads LORA with `pipe.load_lora_weights`, asserts that every tensor of the file landed in a LoRA
parameter with the same value, and saves the UNet/text outputs at scales 1.0 and 0.5 plus the counts.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel
from peft import LoraConfig, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.numpy import load_file
from safetensors.torch import save_file as save_torch

UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]


def load(base: Path) -> tuple[StableDiffusionPipeline, dict]:
    # float32 explicitly: transformers 5 honours the config's dtype, and the tiny text encoder's
    # config.json says float16 (make_tiny.py also writes fp16 variant files).
    pipe = StableDiffusionPipeline.from_pretrained(base, safety_checker=None, requires_safety_checker=False,
                                                   dtype=torch.float32)
    refs = dict(np.load(base.parent / f"{base.name}_refs.npz"))
    return pipe, refs


def unet_out(pipe, refs, **kw) -> np.ndarray:
    with torch.no_grad():
        return pipe.unet(torch.from_numpy(refs["unet_sample"]), torch.from_numpy(refs["unet_timesteps"]),
                         encoder_hidden_states=torch.from_numpy(refs["unet_context"]), **kw).sample.numpy()


def text_out(pipe, refs) -> np.ndarray:
    with torch.no_grad():
        return pipe.text_encoder(torch.from_numpy(refs["input_ids"])).last_hidden_state.numpy()


def randomize_lora(model: torch.nn.Module, gen: torch.Generator) -> None:
    """Non-zero A and B everywhere (B starts at zero, which would test nothing)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)


def make(base: Path, out: Path) -> None:
    pipe, refs = load(base)
    gen = torch.Generator().manual_seed(0)
    pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=8, init_lora_weights="gaussian", target_modules=UNET_TARGETS))
    pipe.text_encoder.add_adapter(LoraConfig(r=2, lora_alpha=3, target_modules=TEXT_TARGETS))
    randomize_lora(pipe.unet, gen)
    randomize_lora(pipe.text_encoder, gen)
    unet_sd = get_peft_model_state_dict(pipe.unet)
    text_sd = get_peft_model_state_dict(pipe.text_encoder)
    StableDiffusionPipeline.save_lora_weights(
        out / "diffusers", unet_lora_layers=unet_sd, text_encoder_lora_layers=text_sd,
        unet_lora_adapter_metadata=pipe.unet.peft_config["default"].to_dict(),
        text_encoder_lora_adapter_metadata=pipe.text_encoder.peft_config["default"].to_dict(),
    )
    outputs = {"unet_out": unet_out(pipe, refs), "text_out": text_out(pipe, refs),
               "n_unet": len(unet_sd), "n_text": len(text_sd)}

    # PEFT's own layout: a PeftModel over a fresh copy of the base UNet, same LoRA weights.
    fresh = UNet2DConditionModel.from_pretrained(base / "unet")
    cfg = LoraConfig(r=4, lora_alpha=8, init_lora_weights="gaussian", target_modules=UNET_TARGETS)
    peft_unet = get_peft_model(fresh, cfg)
    result = set_peft_model_state_dict(peft_unet, {f"base_model.model.{k}": v for k, v in unet_sd.items()})
    assert not [k for k in result.unexpected_keys if "lora" in k], result.unexpected_keys
    peft_unet.save_pretrained(out / "peft")

    # kohya layout: lora_unet_<name with _>.lora_down/.lora_up/.alpha, lora_te_ for the text encoder.
    kohya = {}
    for prefix, sd, alpha in (("lora_unet", unet_sd, 8.0), ("lora_te", text_sd, 3.0)):
        for key, v in sd.items():
            name, which = key.rsplit(".lora_", 1)
            kname = f"{prefix}_{name.replace('.', '_')}"
            kohya[f"{kname}.{'lora_down' if which.startswith('A') else 'lora_up'}.weight"] = v.contiguous()
            kohya[f"{kname}.alpha"] = torch.tensor(alpha)
    save_torch(kohya, str(out / "kohya.safetensors"))
    pipe2, _ = load(base)
    pipe2.load_lora_weights(str(out / "kohya.safetensors"))
    outputs["unet_out_kohya_diffusers"] = unet_out(pipe2, refs)
    outputs["text_out_kohya_diffusers"] = text_out(pipe2, refs)
    np.savez(out / "outputs.npz", **outputs)


def check(base: Path, lora: Path, out: Path) -> None:
    pipe, refs = load(base)
    outputs = {"unet_base": unet_out(pipe, refs)}
    pipe.load_lora_weights(str(lora))
    file = load_file(str(lora))
    params = {}
    for comp in ("unet", "text_encoder"):
        for name, p in getattr(pipe, comp).named_parameters():
            if ".lora_" in name:  # x.lora_A.default_0.weight -> comp.x.lora_A.weight
                head, which, _adapter, tail = name.rsplit(".", 3)
                params[f"{comp}.{head}.{which}.{tail}"] = p.detach().numpy()
    loaded = [k for k in file if k in params and np.array_equal(params[k], file[k])]
    outputs["n_file"] = len(file)
    outputs["n_loaded"] = len(loaded)
    outputs["n_model_lora"] = len(params)
    outputs["unet_out"] = unet_out(pipe, refs)
    outputs["unet_out_scale05"] = unet_out(pipe, refs, cross_attention_kwargs={"scale": 0.5})
    if any(k.startswith("text_encoder.") for k in file):
        outputs["text_out"] = text_out(pipe, refs)
    pipe.fuse_lora(lora_scale=1.0)
    outputs["unet_out_fused"] = unet_out(pipe, refs)
    np.savez(out, **outputs)
    print(json.dumps({k: int(v) for k, v in outputs.items() if k.startswith("n_")}))


if __name__ == "__main__":
    torch.set_num_threads(2)
    mode, args = sys.argv[1], [Path(a) for a in sys.argv[2:]]
    {"make": make, "check": check}[mode](*args)
