"""StyleBlend's blending attention, transcribed to PyTorch from the team's Jittor code (runs in the checker env).

    python tests/reference/styleblend_ref.py BASE IN.npz OUT.npz

Source: zichongc/jittor-L6810K2-StyleTransfer @ d6e9b896dcae081f43a40d25a52fb78366805bd6 (the code behind 0.4823 on
list B), modules.py and pipeline.py; functions named above each. Transcription notes: `jt` -> `torch`; JDiffusion's
LoRA-compatible `attn.to_q(x, scale)` (base + scale * LoRA) is `lora_call` here, with peft's
`scale_lora_layers` / `unscale_lora_layers` as zichongc/StyleBlend @ 853724c5 src/modules.py does it; the official
`indexes` table names SD's 16 layers, the tiny UNet's 6 self-attention layers are numbered in its order (down
blocks, mid block, up blocks).

BASE is a tiny diffusers SD folder (make_tiny.py). IN.npz: sample [4, 4, 8, 8] (rows: coarse uncond, fine uncond,
coarse, fine), timestep [], context [4, 77, D], c2f / f2c (layer lists), scale, c2f_ratio, f2c_ratio, n_steps,
eval_steps (handler steps to evaluate). The UNet gets a peft LoRA (r 4, random A and B, seed 0) on to_q, to_k,
to_v, to_out.0, written to OUT's folder as lora/pytorch_lora_weights.safetensors for the Jittor side. OUT.npz:
out_<step> (the UNet's output at each handler step) and plain (the same UNet and LoRA without StyleBlend).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel
from diffusers.utils import scale_lora_layers, unscale_lora_layers
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict


# utils/pipeline_utils.py, Handler
class Handler:
    def __init__(self, total_steps=30):
        self.cur_step = 0
        self.total_steps = total_steps

    def update_step(self, n=1):
        self.cur_step += n

    def reset_step(self):
        self.cur_step = 0


# modules.py, feature_blender
def feature_blender():
    def inject(attn, query, key, value):
        """
        query from coarse style branch to fine style branch
        key and value from fine style branch to coarse style branch
        """
        query[[1, 3], ...] = query[[2, 2], ...]
        key[[0, 2], ...] = key[[3, 3], ...]
        value[[0, 2], ...] = value[[3, 3], ...]
        return query, key, value
    return inject


# modules.py, structure_injector
def structure_injector(direction: Literal['c2f', 'f2c'] = 'c2f'):
    def inject(attn, query, key, value):
        if direction == 'c2f':
            query[[1, 3], ...] = query[[2, 2], ...]
        elif direction == 'f2c':
            query[[0, 2], ...] = query[[3, 3], ...]
        return query, key, value
    return inject


# modules.py, appearance_injector
def appearance_injector(direction: Literal['c2f', 'f2c'] = 'c2f'):
    def inject(attn, query, key, value):
        if direction == 'c2f':
            key[[1, 3], ...] = key[[2, 2], ...]
            value[[1, 3], ...] = value[[2, 2], ...]
        elif direction == 'f2c':
            key[[0, 2], ...] = key[[3, 3], ...]
            value[[0, 2], ...] = value[[3, 3], ...]
        return query, key, value
    return inject


def lora_call(attn, layer, x, scale):
    """JDiffusion's `layer(x, scale)`: the base projection plus `scale` times the LoRA update."""
    scale_lora_layers(attn, scale)
    out = layer(x)
    unscale_lora_layers(attn, scale)
    return out


# modules.py, styleblend_self_attention (styleblend_cross_attention is the same function)
def styleblend_self_attention(block_class, csb_lora_scale=1.0, feature_injector=None, handler: Handler = None,
                              steps_to_blend=None):
    class Attention(block_class):
        _parent_class = block_class
        _scale = csb_lora_scale
        _feature_injector = feature_injector
        _steps_to_blend = steps_to_blend if steps_to_blend is not None else [i for i in range(handler.total_steps)]

        def forward(attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, scale=1.0):
            residual = hidden_states
            if attn.spatial_norm is not None:
                hidden_states = attn.spatial_norm(hidden_states, temb)
            input_ndim = hidden_states.ndim
            if input_ndim == 4:
                batch_size, channel, height, width = hidden_states.shape
                hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
            batch_size, sequence_length, _ = (
                hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
            )
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            if attn.group_norm is not None:
                hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
            if encoder_hidden_states is None:
                encoder_hidden_states = hidden_states
            elif attn.norm_cross:
                encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)

            # For each batch: {neg_coarse, neg_fine, coarse, fine}, hidden states in shape [4, S, D]
            fsb_hidden_states = hidden_states[[1, 3], ...]
            fsb_encoder_hidden_states = encoder_hidden_states[[1, 3], ...]
            fsb_query = lora_call(attn, attn.to_q, fsb_hidden_states, scale)
            fsb_key = lora_call(attn, attn.to_k, fsb_encoder_hidden_states, scale)
            fsb_value = lora_call(attn, attn.to_v, fsb_encoder_hidden_states, scale)

            csb_hidden_states = hidden_states[[0, 2], ...]
            csb_encoder_hidden_states = encoder_hidden_states[[0, 2], ...]
            csb_query = lora_call(attn, attn.to_q, csb_hidden_states, attn._scale)
            csb_key = lora_call(attn, attn.to_k, csb_encoder_hidden_states, attn._scale)
            csb_value = lora_call(attn, attn.to_v, csb_encoder_hidden_states, attn._scale)

            query = torch.stack([csb_query[0], fsb_query[0], csb_query[1], fsb_query[1]])
            key = torch.stack([csb_key[0], fsb_key[0], csb_key[1], fsb_key[1]])
            value = torch.stack([csb_value[0], fsb_value[0], csb_value[1], fsb_value[1]])

            if (attn._feature_injector is not None and isinstance(attn._feature_injector, Callable)
                    and handler.cur_step in attn._steps_to_blend):
                query, key, value = attn._feature_injector(query, key, value)

            query = attn.head_to_batch_dim(query)
            key = attn.head_to_batch_dim(key)
            value = attn.head_to_batch_dim(value)

            attention_probs = attn.get_attention_scores(query, key, attention_mask)
            hidden_states = torch.bmm(attention_probs, value)
            hidden_states = attn.batch_to_head_dim(hidden_states)

            hidden_states = lora_call(attn, attn.to_out[0], hidden_states, scale)
            hidden_states = attn.to_out[1](hidden_states)
            if input_ndim == 4:
                hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
            if attn.residual_connection:
                hidden_states = hidden_states + residual
            hidden_states = hidden_states / attn.rescale_output_factor
            return hidden_states
    return Attention


# pipeline.py, StyleBlendT2IPipeline.register_styleblend_modules (cross-attention lists empty, as the defaults)
def register_styleblend_modules(unet, indexes, c2f_self_attn_layers_to_register, f2c_self_attn_layers_to_register,
                                scale, num_inference_timesteps, c2f_step_ratio, f2c_step_ratio):
    handler = Handler(total_steps=num_inference_timesteps)
    step_ratio = 1.
    steps_to_blend = []
    for name, module in unet.named_modules():
        if module.__class__.__name__ == 'Attention' and name.endswith('attn2'):
            module.__class__ = styleblend_self_attention(
                block_class=module.__class__, csb_lora_scale=scale, feature_injector=None, handler=handler,
                steps_to_blend=[i for i in range(int(step_ratio * num_inference_timesteps))],
            )
        elif module.__class__.__name__ == 'Attention' and name.endswith('attn1'):
            injector = None
            if indexes[name] in c2f_self_attn_layers_to_register and indexes[name] in f2c_self_attn_layers_to_register:
                injector = feature_blender()
                step_ratio = c2f_step_ratio
                steps_to_blend = [i for i in range(int(step_ratio * num_inference_timesteps))]
            elif indexes[name] in c2f_self_attn_layers_to_register:
                injector = structure_injector(direction='c2f')  # q inject
                step_ratio = c2f_step_ratio
                steps_to_blend = [i for i in range(int(step_ratio * num_inference_timesteps))]
            elif indexes[name] in f2c_self_attn_layers_to_register:
                injector = appearance_injector(direction='f2c')  # kv inject
                step_ratio = f2c_step_ratio
                steps_to_blend = [i for i in range(int(step_ratio * num_inference_timesteps))]
            module.__class__ = styleblend_self_attention(
                block_class=module.__class__, csb_lora_scale=scale, feature_injector=injector, handler=handler,
                steps_to_blend=steps_to_blend,
            )
    return handler


def tiny_indexes(unet) -> dict[str, int]:
    """The official table's numbering (down blocks, mid block, up blocks) for this UNet's self-attention layers."""
    names = [n for n, m in unet.named_modules() if m.__class__.__name__ == "Attention" and n.endswith("attn1")]
    order = {"down_blocks": 0, "mid_block": 1, "up_blocks": 2}
    names.sort(key=lambda n: (order[n.split(".")[0]], *(int(p) for p in n.split(".") if p.isdigit())))
    return {n: i for i, n in enumerate(names)}


def main(base: Path, inp: Path, out: Path) -> None:
    x = dict(np.load(inp))
    unet = UNet2DConditionModel.from_pretrained(base / "unet", dtype=torch.float32).eval()
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian",
                                target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    StableDiffusionPipeline.save_lora_weights(
        out.parent / "lora", unet_lora_layers=get_peft_model_state_dict(unet),
        unet_lora_adapter_metadata=unet.peft_config["default"].to_dict())
    sample, context = torch.from_numpy(x["sample"]), torch.from_numpy(x["context"])
    t = torch.tensor(int(x["timestep"]))
    results = {}
    with torch.no_grad():
        results["plain"] = unet(sample, t, encoder_hidden_states=context).sample.numpy()
        handler = register_styleblend_modules(
            unet, tiny_indexes(unet), [int(i) for i in x["c2f"]], [int(i) for i in x["f2c"]], float(x["scale"]),
            int(x["n_steps"]), float(x["c2f_ratio"]), float(x["f2c_ratio"]))
        for step in x["eval_steps"]:
            handler.cur_step = int(step)
            results[f"out_{int(step)}"] = unet(sample, t, encoder_hidden_states=context).sample.numpy()
    np.savez(out, **results)


if __name__ == "__main__":
    main(*map(Path, sys.argv[1:4]))
