"""CLIP's vision tower with its projection (transformers' `CLIPVisionModelWithProjection`): the image
encoder of IP-Adapter, built from its config.json; attribute names equal transformers' checkpoint keys
(`vision_model.embeddings.patch_embedding.weight`, ..., `visual_projection.weight`). The encoder
layers are the text tower's (jstyle.models.clip_text). Also CLIPImageProcessor's preprocessing.
"""

from __future__ import annotations

from typing import Any

import jittor as jt
import numpy as np
from jittor import nn

from ..errors import ConfigError, InputError
from .clip_text import CLIPEncoder
from .conv import Conv2d
from .linear import Linear
from .normalization import LayerNorm

__all__ = ["CLIPVisionModelWithProjection", "clip_preprocess", "CLIP_MEAN", "CLIP_STD"]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_DEFAULTS: dict[str, Any] = {
    "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
    "num_channels": 3, "image_size": 224, "patch_size": 32, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5,
    "projection_dim": 512,
}


def clip_preprocess(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 [B, H, W, 3] (or one [H, W, 3]) -> float32 [B, 3, size, size] as CLIPImageProcessor (slow, PIL):
    shortest side resized to `size` (bicubic), centre crop, x/255, then (x - mean) / std per channel."""
    from PIL import Image

    images = np.asarray(images)
    images = images[None] if images.ndim == 3 else images
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise InputError(f"IP-Adapter images must be uint8 [B, H, W, 3], got {images.dtype} {images.shape}")
    out = []
    for image in images:
        h, w = image.shape[:2]
        short, long = (w, h) if w <= h else (h, w)
        new_long = int(size * long / short)  # transformers' get_resize_output_image_size
        nw, nh = (size, new_long) if w <= h else (new_long, size)
        im = Image.fromarray(image)
        if (nw, nh) != (w, h):
            im = im.resize((nw, nh), Image.BICUBIC)
        top, left = (nh - size) // 2, (nw - size) // 2
        arr = np.asarray(im.crop((left, top, left + size, top + size)), np.float32) / 255.0
        out.append(((arr - np.float32(CLIP_MEAN)) / np.float32(CLIP_STD)).transpose(2, 0, 1))
    return np.stack(out).astype(np.float32)


class CLIPVisionEmbeddings(nn.Module):
    def __init__(self, hidden_size: int, image_size: int, patch_size: int, num_channels: int):
        super().__init__()
        self.class_embedding = jt.zeros((hidden_size,))
        self.patch_embedding = Conv2d(num_channels, hidden_size, patch_size, stride=patch_size, bias=False)
        self.num_positions = (image_size // patch_size) ** 2 + 1
        self.position_embedding = nn.Embedding(self.num_positions, hidden_size)

    def execute(self, pixel_values: jt.Var) -> jt.Var:
        b = pixel_values.shape[0]
        patches = self.patch_embedding(pixel_values)  # [B, D, g, g]
        patches = patches.reshape(b, patches.shape[1], -1).transpose(0, 2, 1)
        cls = self.class_embedding.reshape(1, 1, -1).broadcast((b, 1, patches.shape[2]))
        return jt.concat([cls, patches], dim=1) + self.position_embedding.weight[None]


class CLIPVisionTransformer(nn.Module):
    def __init__(self, c: dict[str, Any]):
        super().__init__()
        self.embeddings = CLIPVisionEmbeddings(c["hidden_size"], c["image_size"], c["patch_size"], c["num_channels"])
        self.pre_layrnorm = LayerNorm(c["hidden_size"], eps=c["layer_norm_eps"])  # sic, transformers' name
        self.encoder = CLIPEncoder(
            c["num_hidden_layers"], hidden_size=c["hidden_size"], intermediate_size=c["intermediate_size"],
            num_heads=c["num_attention_heads"], act=c["hidden_act"], eps=c["layer_norm_eps"],
        )
        self.post_layernorm = LayerNorm(c["hidden_size"], eps=c["layer_norm_eps"])


class CLIPVisionModelWithProjection(nn.Module):
    """`execute(pixel_values [B, 3, S, S])` -> (image_embeds [B, projection_dim], hidden states per layer)."""

    def __init__(self, config: dict[str, Any]):
        super().__init__()
        self.config = config
        c = {**_DEFAULTS, **config}
        self.image_size = c["image_size"]
        self.vision_model = CLIPVisionTransformer(c)
        self.visual_projection = Linear(c["hidden_size"], c["projection_dim"], bias=False)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> CLIPVisionModelWithProjection:
        """Build from a transformers CLIPVisionConfig dict (image_encoder/config.json)."""
        c = {**_DEFAULTS, **config.get("vision_config", {}), **config}
        if c["hidden_act"] not in ("gelu", "quick_gelu"):
            raise ConfigError(f"image_encoder config: hidden_act '{c['hidden_act']}' is not supported; "
                              "supported: gelu, quick_gelu")
        if c["hidden_size"] % c["num_attention_heads"] or c["image_size"] % c["patch_size"]:
            raise ConfigError("image_encoder config: hidden_size must divide by num_attention_heads and "
                              "image_size by patch_size")
        return cls({k: v for k, v in c.items() if k != "vision_config"})

    @staticmethod
    def convert_state_dict(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Drop the `position_ids` buffer that transformers 4 files may carry (it holds no weights)."""
        return {k: v for k, v in state.items() if not k.endswith("embeddings.position_ids")}

    def execute(self, pixel_values: jt.Var | np.ndarray) -> tuple[jt.Var, tuple[jt.Var, ...]]:
        if not isinstance(pixel_values, jt.Var):
            pixel_values = jt.array(np.asarray(pixel_values, np.float32))
        if tuple(pixel_values.shape[2:]) != (self.image_size, self.image_size):
            raise InputError(f"image encoder expects {self.image_size}x{self.image_size} pixels, got "
                             f"{tuple(pixel_values.shape[2:])}; use clip_preprocess")
        vm = self.vision_model
        hidden = vm.pre_layrnorm(vm.embeddings(pixel_values))
        states = [hidden]
        for layer in vm.encoder.layers:
            hidden = layer(hidden)
            states.append(hidden)
        pooled = vm.post_layernorm(hidden[:, 0])
        return self.visual_projection(pooled), tuple(states)
