"""diffusers' attention precision and upcast flags on the tiny models (run in the checker env).

usage: attention_ref.py TINY_DIR IN.npz OUT.npz   (TINY_DIR: make_tiny.py's output, with sd1/ and sd2/)
IN.npz: q, k, v [B, h, N|M, d] and mask [B, 1, N, M] (float32); q16, k16, v16 (float16, large: scores ~566);
latents [1, 4, h, w] (scaled, as a UNet leaves them). OUT.npz: out32_mask from diffusers' Attention (AttnProcessor:
get_attention_scores then bmm) in float32; out16_<ua><us> in float16 for upcast_attention ua and
upcast_softmax us (0/1) and out16_exact (float64 math on the float16 inputs); {sd1,sd2,vae}_names and
{sd1,sd2,vae}_upcast [n, 2] (upcast_attention, upcast_softmax) of every Attention diffusers builds for
sd1/unet, sd2/unet and sd2/vae; vae_dec32 / vae_dec16: sd2/vae's decode of `latents` in float32 / float16;
vae_dec32_from16: in float32 of the latents rounded to float16 (diffusers' SDXL pipelines with force_upcast).
"""

import sys

import numpy as np
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.models.attention_processor import Attention


def diffusers_attention(q, k, v, mask=None, upcast_attention=False, upcast_softmax=False, dtype=torch.float32):
    """AttnProcessor's core on [B, h, N, d]: probs = attn.get_attention_scores(Q, K, mask); bmm(probs, V)."""
    b, h, n, d = q.shape
    attn = Attention(query_dim=h * d, heads=h, dim_head=d, upcast_attention=upcast_attention,
                     upcast_softmax=upcast_softmax).to(dtype)
    flat = lambda x: torch.from_numpy(x).to(dtype).reshape(b * h, x.shape[2], d)  # noqa: E731
    m = None if mask is None else torch.from_numpy(mask).to(dtype).expand(b, h, n, mask.shape[-1]).reshape(b * h, n, -1)
    probs = attn.get_attention_scores(flat(q), flat(k), m)
    return torch.bmm(probs, flat(v)).reshape(b, h, n, d).float().numpy()


def flags(model) -> tuple[np.ndarray, np.ndarray]:
    rows = [(n, m.upcast_attention, m.upcast_softmax) for n, m in model.named_modules() if isinstance(m, Attention)]
    return np.array([r[0] for r in rows]), np.array([r[1:] for r in rows], dtype=np.int64)


def main(model: str, inp: str, out: str) -> None:
    torch.set_num_threads(2)
    with np.load(inp) as f:
        a = dict(f)
    res = {"out32_mask": diffusers_attention(a["q"], a["k"], a["v"], a["mask"])}
    for ua in (0, 1):
        for us in (0, 1):
            res[f"out16_{ua}{us}"] = diffusers_attention(a["q16"], a["k16"], a["v16"], None, bool(ua), bool(us),
                                                         torch.float16)
    q, k, v = (a[n].astype(np.float64) for n in ("q16", "k16", "v16"))
    s = q @ k.swapaxes(-1, -2) * q.shape[-1] ** -0.5
    p = np.exp(s - s.max(-1, keepdims=True))
    res["out16_exact"] = (p / p.sum(-1, keepdims=True)) @ v
    for kind in ("sd1", "sd2"):
        unet = UNet2DConditionModel.from_pretrained(f"{model}/{kind}/unet")
        res[f"{kind}_names"], res[f"{kind}_upcast"] = flags(unet)
    vae = AutoencoderKL.from_pretrained(f"{model}/sd2/vae")
    res["vae_names"], res["vae_upcast"] = flags(vae)
    with torch.no_grad():
        z, sf = torch.from_numpy(a["latents"]), vae.config.scaling_factor
        res["vae_dec32"] = vae.decode(z / sf).sample.numpy()
        res["vae_dec32_from16"] = vae.decode(z.half().float() / sf).sample.numpy()  # SDXL's force_upcast
        res["vae_dec16"] = vae.half().decode(z.half() / sf).sample.float().numpy()
    np.savez(out, **res)


if __name__ == "__main__":
    main(*sys.argv[1:4])
