"""IP-Adapter (Ye et al. 2023): an image prompt through decoupled cross-attention.

A CLIP vision embedding of the image goes through Linear + LayerNorm to 4 tokens; every
cross-attention (attn2) gets its own to_k_ip / to_v_ip and adds `scale * Attn(Q, K_ip, V_ip)` to the
text attention. Loads the public file layout (`image_proj.proj.*`, `image_proj.norm.*`,
`ip_adapter.{1,3,5,...}.to_{k,v}_ip.weight`, numbered over all attention layers as the original code
does) from a local safetensors file, and the image encoder from a transformers
`CLIPVisionModelWithProjection` folder. With classifier-free guidance the unconditional half sees
the tokens of a zero image embedding, as in diffusers.

    load_ip_adapter(pipe, "ip-adapter_sd15.safetensors", "image_encoder/", scale=0.6)
    set_ip_adapter_image(pipe, style_image)  # uint8 [H, W, 3], or image_embeds=ip_adapter_embeds(pipe, ...)
    pipe.text_to_image("a dolphin")          # or sdedit.img2img(..., ip_adapter_image=style_image)
    with ip_adapter_image_prompt(pipe, other_image):  # another image prompt for the calls in the block only
        pipe.text_to_image("a dolphin")
    set_ip_adapter_scale(pipe, 0.3)
    unload_ip_adapter(pipe)                  # the previous processors are back
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import jittor as jt
import numpy as np
from jittor import nn

from ..errors import InputError, WeightsError
from ..models.attention import Attention, AttnProcessor

__all__ = ["ImageProjModel", "IPAttnProcessor", "IPAdapter", "load_ip_adapter", "get_ip_adapter",
           "ip_adapter_embeds", "ip_adapter_image_prompt", "set_ip_adapter_image", "set_ip_adapter_scale",
           "unload_ip_adapter"]


class ImageProjModel(nn.Module):
    """image_embeds [B, D_clip] -> tokens [B, num_tokens, cross_attention_dim] (Linear, reshape, LayerNorm)."""

    def __init__(self, clip_dim: int, cross_attention_dim: int, num_tokens: int):
        super().__init__()
        self.num_tokens = num_tokens
        self.proj = nn.Linear(clip_dim, cross_attention_dim * num_tokens)
        self.norm = nn.LayerNorm(cross_attention_dim)

    def execute(self, image_embeds: jt.Var) -> jt.Var:
        return self.norm(self.proj(image_embeds).reshape(image_embeds.shape[0], self.num_tokens, -1))


class IPAttnProcessor(AttnProcessor):
    """Cross-attention plus scale * attention over the adapter's image tokens (same queries)."""

    def __init__(self, adapter: IPAdapter, to_k_ip: nn.Linear, to_v_ip: nn.Linear):
        self.adapter, self.to_k_ip, self.to_v_ip = adapter, to_k_ip, to_v_ip

    def attend(self, attn: Attention, query: jt.Var, key: jt.Var, value: jt.Var, mask: jt.Var | None) -> jt.Var:
        out = super().attend(attn, query, key, value, mask)
        scale, tokens = self.adapter.scale, self.adapter.tokens_for(query.shape[0])
        if scale == 0 or tokens is None:
            return out
        ip_key = attn.head_to_batch_dim(self.to_k_ip(tokens))
        ip_value = attn.head_to_batch_dim(self.to_v_ip(tokens))
        return out + scale * attn.attend(query, ip_key, ip_value)  # Attn(Q,K,V) + s Attn(Q,K_ip,V_ip)


class IPAdapter:
    """A loaded IP-Adapter: its image encoder, projection and processors; `set_image`, `scale`, `unload`."""

    def __init__(self, pipe, image_encoder, image_proj: ImageProjModel, saved: dict, scale: float):
        self.pipe, self.image_encoder, self.image_proj = pipe, image_encoder, image_proj
        self._saved = saved
        self.scale = float(scale)
        self._cond: jt.Var | None = None
        self._uncond: jt.Var | None = None

    def image_embeds(self, images: np.ndarray) -> jt.Var:
        """CLIP image embeddings [B, D] of uint8 images [B, H, W, 3] (CLIPImageProcessor preprocessing)."""
        from ..models.clip_vision import clip_preprocess

        with jt.no_grad():
            return self.image_encoder(clip_preprocess(images, self.image_encoder.image_size))[0]

    def set_image(self, images: np.ndarray | None, image_embeds: jt.Var | None = None) -> None:
        """The image prompt (uint8 [H, W, 3], or one per prompt [B, H, W, 3]) or its embeddings; None clears it."""
        if images is None and image_embeds is None:
            self._cond = self._uncond = None
            return
        embeds = self.image_embeds(images) if image_embeds is None else image_embeds
        with jt.no_grad():
            self._cond = self.image_proj(embeds)
            self._uncond = self.image_proj(jt.zeros_like(embeds))  # CFG: a zero image embedding

    @contextmanager
    def image_prompt(self, images: np.ndarray | None, image_embeds: jt.Var | None = None) -> Iterator[IPAdapter]:
        """`set_image(images, image_embeds)` inside the block; the image prompt set before comes back after it."""
        before = self._cond, self._uncond
        self.set_image(images, image_embeds)
        try:
            yield self
        finally:
            self._cond, self._uncond = before

    def tokens_for(self, batch: int) -> jt.Var | None:
        """Tokens for a UNet batch: [uncond..., cond...] when it is twice the prompts (CFG), else cond."""
        if self._cond is None:
            return None
        k = self._cond.shape[0]
        if batch == k or k == 1 and batch == 1:
            return self._cond
        if batch == 2 * k:
            return jt.concat([self._uncond, self._cond])
        if k == 1 and batch % 2 == 0:
            half = batch // 2
            return jt.concat([self._uncond.broadcast((half, *self._uncond.shape[1:])),
                              self._cond.broadcast((half, *self._cond.shape[1:]))])
        raise InputError(f"IP-Adapter has {k} image(s) for a UNet batch of {batch}; give one image, or one per prompt")

    def set_scale(self, scale: float) -> None:
        """Weight of the image attention in every cross-attention (0: the plain pipeline)."""
        self.scale = float(scale)

    def unload(self) -> None:
        """Put back the processors this adapter replaced (others set since then stay)."""
        procs = self.pipe.unet.attn_processors
        for name, proc in procs.items():
            if isinstance(proc, IPAttnProcessor) and proc.adapter is self:
                procs[name] = self._saved[name]
        self.pipe.unet.set_attn_processor(procs)
        self._cond = self._uncond = None


def _linear(weight: np.ndarray, bias: np.ndarray | None = None) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    layer.weight.assign(jt.array(weight.astype(np.float32)))
    if bias is not None:
        layer.bias.assign(jt.array(bias.astype(np.float32)))
    return layer


def load_ip_adapter(pipe, weights_file: str | Path, image_encoder_dir: str | Path, scale: float = 1.0) -> IPAdapter:
    """Install an IP-Adapter (public `ip-adapter_sd15` layout, safetensors) on `pipe.unet`'s cross-attentions;
    one already loaded is unloaded first. Any missing or unexpected key is a WeightsError."""
    from ..loading import load_model, load_safetensors
    from ..models.clip_vision import CLIPVisionModelWithProjection

    path = Path(weights_file)
    if path.suffix != ".safetensors":
        raise WeightsError(f"{path}: only .safetensors IP-Adapter files are read; convert a .bin once with "
                           "scripts/convert_to_safetensors.py")
    state = load_safetensors(path)
    unet = pipe.unet
    names = list(unet.attn_processors)
    cross = [i for i, n in enumerate(names) if n.endswith("attn2.processor")]
    proj_keys = {f"image_proj.{k}" for k in ("proj.weight", "proj.bias", "norm.weight", "norm.bias")}
    ip_keys = {f"ip_adapter.{2 * j + 1}.to_{kv}_ip.weight" for j in range(len(cross)) for kv in "kv"}
    if any(k.startswith("image_proj.latents") or k.startswith("image_proj.proj_in") for k in state):
        raise WeightsError(f"{path}: an IP-Adapter Plus (Resampler) file; only the plain ip-adapter_sd15 "
                           "layout (image_proj.proj/norm) is supported")
    missing, extra = sorted((proj_keys | ip_keys) - set(state)), sorted(set(state) - proj_keys - ip_keys)
    if missing or extra:
        raise WeightsError(f"{path}: not an IP-Adapter for this UNet ({len(cross)} cross-attentions): "
                           + (f"missing {missing[0]}" if missing else f"unexpected {extra[0]}")
                           + f" ({len(missing)} missing, {len(extra)} unexpected keys)")
    cross_dim = unet.config.get("cross_attention_dim", 768)
    cross_dim = cross_dim[0] if isinstance(cross_dim, (list, tuple)) else cross_dim
    w = state["image_proj.proj.weight"]
    if w.shape[0] % cross_dim or state["image_proj.norm.weight"].shape != (cross_dim,):
        raise WeightsError(f"{path}: image projection of shape {w.shape} does not fit cross_attention_dim {cross_dim}")
    encoder = load_model(CLIPVisionModelWithProjection, image_encoder_dir)
    if encoder.visual_projection.weight.shape[0] != w.shape[1]:
        raise WeightsError(f"{image_encoder_dir}: image embeddings of size {encoder.visual_projection.weight.shape[0]} "
                           f"do not fit {path} (expects {w.shape[1]})")
    proj = ImageProjModel(w.shape[1], cross_dim, w.shape[0] // cross_dim)
    proj.proj.weight.assign(jt.array(w.astype(np.float32)))
    proj.proj.bias.assign(jt.array(state["image_proj.proj.bias"].astype(np.float32)))
    proj.norm.weight.assign(jt.array(state["image_proj.norm.weight"].astype(np.float32)))
    proj.norm.bias.assign(jt.array(state["image_proj.norm.bias"].astype(np.float32)))
    modules = {n: m for n, m in unet.named_modules() if isinstance(m, Attention)}
    kv_layers = {}
    for j, i in enumerate(cross):
        attn = modules[names[i][: -len(".processor")]]
        k, v = state[f"ip_adapter.{2 * j + 1}.to_k_ip.weight"], state[f"ip_adapter.{2 * j + 1}.to_v_ip.weight"]
        inner = attn.to_k.weight.shape[0]
        if k.shape != (inner, cross_dim) or v.shape != (inner, cross_dim):
            raise WeightsError(f"{path}: ip_adapter.{2 * j + 1} has shape {k.shape}, expected {(inner, cross_dim)}")
        kv_layers[names[i]] = (_linear(k), _linear(v))
    unload_ip_adapter(pipe)  # only now: a failed load changes nothing
    saved = unet.attn_processors
    adapter = IPAdapter(pipe, encoder, proj, saved, scale)
    unet.set_attn_processor({**saved, **{n: IPAttnProcessor(adapter, k, v) for n, (k, v) in kv_layers.items()}})
    adapter.num_tensors = len(proj_keys) + len(ip_keys)
    return adapter


def get_ip_adapter(pipe) -> IPAdapter | None:
    """The IP-Adapter installed on `pipe.unet` (found through its processors), or None."""
    for proc in pipe.unet.attn_processors.values():
        if isinstance(proc, IPAttnProcessor):
            return proc.adapter
    return None


def _require(pipe) -> IPAdapter:
    adapter = get_ip_adapter(pipe)
    if adapter is None:
        raise InputError("no IP-Adapter is loaded; load one with load_ip_adapter (CLI: --ip-adapter FILE "
                         "--image-encoder DIR)")
    return adapter


def ip_adapter_embeds(pipe, images: np.ndarray) -> jt.Var:
    """CLIP image embeddings [B, D] of uint8 images [B, H, W, 3] with the loaded adapter's image encoder."""
    return _require(pipe).image_embeds(images)


def set_ip_adapter_image(pipe, images: np.ndarray | None = None, image_embeds: jt.Var | None = None) -> None:
    """Image prompt for the following sampling calls (uint8 images or their `ip_adapter_embeds`); None clears."""
    _require(pipe).set_image(images, image_embeds)


def ip_adapter_image_prompt(pipe, images: np.ndarray | None = None,
                            image_embeds: jt.Var | None = None) -> AbstractContextManager[IPAdapter]:
    """`with ip_adapter_image_prompt(pipe, image): ...`: that image prompt for the calls inside the block only
    (InputError if no IP-Adapter is loaded); the one set before is restored after it."""
    return _require(pipe).image_prompt(images, image_embeds)


def set_ip_adapter_scale(pipe, scale: float) -> None:
    """Weight of the image prompt: out = Attn(Q, K, V) + scale * Attn(Q, K_ip, V_ip)."""
    _require(pipe).set_scale(scale)


def unload_ip_adapter(pipe) -> None:
    """Remove the IP-Adapter, if one is loaded: the previous processors come back."""
    adapter = get_ip_adapter(pipe)
    if adapter is not None:
        adapter.unload()
