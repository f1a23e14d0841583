"""StyleID in PyTorch on diffusers' UNet with attention processors: the reference for jstyle's port.
Runs in the checker env (torch, diffusers), never jstyle's.

    python tests/reference/styleid_ref.py MODEL_DIR IN.npz OUT.npz

IN.npz: content uint8 [B, H, W, 3], style uint8 [H, W, 3], gamma, T, steps, start_step, adain, inject,
layers (prefixes, comma-joined). OUT.npz: latents (clean stylised latents), images (uint8), z_T.
Same equations as the paper: DDIM inversion (eta 0, empty prompt, model evaluated at the target
timestep on the current latent), Q_c / K_s / V_s recorded per timestep in attn1 of the chosen layers,
AdaIN of the inverted latents, sampling with Q = g Q_c + (1 - g) Q_cs, K = K_s, V = V_s and
softmax(T Q K^T / sqrt(d)) V.
"""

from __future__ import annotations

import sys

import numpy as np
import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline


class Record:
    def __init__(self, name, store, keep):
        self.name, self.store, self.keep, self.t = name, store, keep, None

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **kw):
        q, k, v = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        self.store.setdefault(self.t, {})[self.name] = {n: x for n, x in zip("qkv", (q, k, v)) if n in self.keep}
        return attend(attn, q, k, v, 1.0)


class Inject:
    def __init__(self, name, content, style, gamma, T):
        self.name, self.content, self.style, self.gamma, self.T, self.t = name, content, style, gamma, T, None

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **kw):
        q = self.gamma * self.content[self.t][self.name]["q"] + (1 - self.gamma) * attn.to_q(hidden_states)
        kv = self.style[self.t][self.name]
        return attend(attn, q, kv["k"], kv["v"], self.T)


def attend(attn, q, k, v, T):
    b = q.shape[0]
    heads = attn.heads

    def split(x):
        return x.reshape(x.shape[0], x.shape[1], heads, -1).transpose(1, 2).float().expand(b, -1, -1, -1)

    q, k, v = split(q), split(k), split(v)
    w = torch.softmax(T * (q @ k.transpose(-1, -2)) * attn.scale, dim=-1)
    out = (w @ v).transpose(1, 2).reshape(b, -1, heads * q.shape[-1])
    return attn.to_out[1](attn.to_out[0](out))


def main(model, inp, out):
    cfg = dict(np.load(inp))
    torch.set_grad_enabled(False)
    pipe = StableDiffusionPipeline.from_pretrained(model, dtype=torch.float32, safety_checker=None)
    unet, vae = pipe.unet, pipe.vae
    sched = DDIMScheduler.from_config(pipe.scheduler.config)
    steps, start = int(cfg["steps"]), int(cfg["start_step"])
    sched.set_timesteps(steps)
    ts_up = sched.timesteps.flip(0)[:start]
    stride = sched.config.num_train_timesteps // steps
    acp, final = sched.alphas_cumprod, sched.final_alpha_cumprod
    kind = sched.config.prediction_type
    prefixes = str(cfg["layers"]).split(",")
    layers = [n[: -len(".processor")] for n in unet.attn_processors
              if n.endswith("attn1.processor") and any(n.startswith(p + ".") for p in prefixes)]
    empty = pipe.encode_prompt("", "cpu", 1, False)[0]

    def latents_of(images):
        x = torch.from_numpy(images.astype(np.float32).transpose(0, 3, 1, 2) / 127.5 - 1.0)
        return vae.encode(x).latent_dist.mode() * vae.config.scaling_factor

    def x0_eps(o, x, a):
        sa, sb = a**0.5, (1 - a) ** 0.5
        return ((x - sb * o) / sa, o) if kind == "epsilon" else (sa * x - sb * o, sa * o + sb * x)

    def invert(z, keep):
        store, base = {}, dict(unet.attn_processors)
        recs = [Record(n, store, keep) for n in layers]
        unet.set_attn_processor({**base, **{f"{r.name}.processor": r for r in recs}})
        ctx = empty.expand(z.shape[0], -1, -1)
        for t in ts_up:
            t = int(t)
            for r in recs:
                r.t = t
            a = acp[t - stride] if t - stride >= 0 else final
            x0, eps = x0_eps(unet(z, t, ctx).sample, z, a)
            z = acp[t] ** 0.5 * x0 + (1 - acp[t]) ** 0.5 * eps  # x_{t+1} = sqrt(a') x0 + sqrt(1-a') eps
        unet.set_attn_processor(base)
        return z, store

    inject = bool(cfg["inject"])
    z_s, kv = invert(latents_of(cfg["style"][None]), "kv" if inject else "")
    z_c, qs = invert(latents_of(cfg["content"]), "q" if inject else "")
    if bool(cfg["adain"]):
        mc, sc = z_c.mean((2, 3), keepdim=True), z_c.std((2, 3), keepdim=True)
        ms, ss = z_s.mean((2, 3), keepdim=True), z_s.std((2, 3), keepdim=True)
        z = ss * (z_c - mc) / sc + ms
    else:
        z = z_c
    z_T = z.clone()
    base = dict(unet.attn_processors)
    injs = [Inject(n, qs, kv, float(cfg["gamma"]), float(cfg["T"])) for n in layers] if inject else []
    unet.set_attn_processor({**base, **{f"{p.name}.processor": p for p in injs}})
    ctx = empty.expand(z.shape[0], -1, -1)
    for t in ts_up.flip(0):
        for p in injs:
            p.t = int(t)
        z = sched.step(unet(z, t, ctx).sample, t, z).prev_sample
    unet.set_attn_processor(base)
    img = vae.decode(z / vae.config.scaling_factor).sample
    img = ((img / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    np.savez(out, latents=z.numpy(), images=img, z_T=z_T.numpy())


if __name__ == "__main__":
    main(*sys.argv[1:4])
