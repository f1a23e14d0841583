"""DiffStyle in PyTorch on diffusers' UNet (a forward hook on unet.mid_block): the reference for jstyle's
port. Runs in the checker env (torch, diffusers), never jstyle's.

    python tests/reference/diffstyle_ref.py MODEL_DIR IN.npz OUT.npz

IN.npz: content uint8 [B, H, W, 3], style uint8 [H, W, 3], gamma, t_edit, t_boost, eta, omega, dt_lambda,
steps, start_step, seed. OUT.npz: latents (clean), images (uint8), x_T (the style's inverted latent).
Equations: DDIM inversion (eta 0, empty prompt, model at the target timestep on the current latent) of
the style (-> x_T) and of the content (recording the mid-block output h per timestep); sampling from x_T
where for t >= t_edit the mid-block output is slerp(g; h, (|h|/|h_c|) h_c), x0 = w P(eps_inj) + (1-w) P(eps),
direction from the plain eps, scaled by dt_lambda for t >= 950, and DDIM noise eta for t <= t_boost
(numpy standard normals from default_rng(seed), drawn once per boosted step).
"""

from __future__ import annotations

import sys

import numpy as np
import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline


def slerp(a, b, g):
    a2, b2 = a.flatten(1).double(), b.flatten(1).double()
    cos = (a2 * b2).sum(1) / (a2.norm(dim=1) * b2.norm(dim=1))
    th = torch.acos(cos.clamp(-1 + 1e-7, 1 - 1e-7))
    wa, wb = torch.sin((1 - g) * th) / torch.sin(th), torch.sin(g * th) / torch.sin(th)
    return (wa[:, None] * a2 + wb[:, None] * b2).reshape(a.shape).to(a.dtype)


def main(model, inp, out):
    cfg = dict(np.load(inp))
    torch.set_grad_enabled(False)
    pipe = StableDiffusionPipeline.from_pretrained(model, dtype=torch.float32, safety_checker=None)
    unet, vae = pipe.unet, pipe.vae
    sched = DDIMScheduler.from_config(pipe.scheduler.config)
    steps, start = int(cfg["steps"]), int(cfg["start_step"])
    sched.set_timesteps(steps)
    ts_up = [int(t) for t in sched.timesteps.flip(0)[:start]]
    stride = sched.config.num_train_timesteps // steps
    acp, final = sched.alphas_cumprod, sched.final_alpha_cumprod
    kind = sched.config.prediction_type
    g, w, lam = float(cfg["gamma"]), float(cfg["omega"]), float(cfg["dt_lambda"])
    empty = pipe.encode_prompt("", "cpu", 1, False)[0]
    state = {"mode": None}

    def hook(module, args, output):
        if state["mode"] == "record":
            state["store"][state["t"]] = output.clone()
        elif state["mode"] == "inject":
            n = output.shape[0] // 2
            h, hc = output[:n], state["store"][state["t"]]
            hc = hc * (h.flatten(1).norm(dim=1) / hc.flatten(1).norm(dim=1)).reshape(-1, 1, 1, 1)
            return torch.cat([slerp(h, hc, g), output[n:]])
        return output

    unet.mid_block.register_forward_hook(hook)

    def latents_of(images):
        x = torch.from_numpy(images.astype(np.float32).transpose(0, 3, 1, 2) / 127.5 - 1.0)
        return vae.encode(x).latent_dist.mode() * vae.config.scaling_factor

    def x0_eps(o, x, a):
        sa, sb = a**0.5, (1 - a) ** 0.5
        return ((x - sb * o) / sa, o) if kind == "epsilon" else (sa * x - sb * o, sa * o + sb * x)

    def invert(z, record):
        ctx = empty.expand(z.shape[0], -1, -1)
        state.update(mode="record" if record else None, store={})
        for t in ts_up:
            state["t"] = t
            a = acp[t - stride] if t - stride >= 0 else final
            x0, eps = x0_eps(unet(z, t, ctx).sample, z, a)
            z = acp[t] ** 0.5 * x0 + (1 - acp[t]) ** 0.5 * eps
        state["mode"] = None
        return z, state["store"]

    content = latents_of(cfg["content"])
    n = content.shape[0]
    x_T, _ = invert(latents_of(cfg["style"][None]), False)
    _, store = invert(content, True)
    rng = np.random.default_rng(int(cfg["seed"]))
    x = x_T.expand(n, -1, -1, -1).clone()
    ctx = empty.expand(n, -1, -1)
    for t in reversed(ts_up):
        a_t = acp[t]
        a_prev = acp[t - stride] if t - stride >= 0 else final
        if t >= int(cfg["t_edit"]) and g > 0:
            state.update(mode="inject", t=t, store=store)
            o = unet(torch.cat([x, x]), t, torch.cat([ctx, ctx])).sample
            state["mode"] = None
            x0i, _ = x0_eps(o[:n], x, a_t)
            x0, eps = x0_eps(o[n:], x, a_t)
            x0 = w * x0i + (1 - w) * x0
        else:
            x0, eps = x0_eps(unet(x, t, ctx).sample, x, a_t)
        eta = float(cfg["eta"]) if t <= int(cfg["t_boost"]) else 0.0
        sigma = float(eta * np.sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)))
        d = lam if t >= 950 else 1.0
        x = a_prev**0.5 * x0 + d * float(np.sqrt(max(float(1 - a_prev - sigma**2), 0.0))) * eps
        if sigma > 0:
            x = x + sigma * torch.from_numpy(rng.standard_normal(tuple(x.shape)).astype(np.float32))
    img = vae.decode(x / vae.config.scaling_factor).sample
    img = ((img / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    np.savez(out, latents=x.numpy(), images=img, x_T=x_T.numpy())


if __name__ == "__main__":
    main(*sys.argv[1:4])
