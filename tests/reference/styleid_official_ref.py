"""StyleID as its authors' code runs it, transcribed to PyTorch + diffusers (checker env, never jstyle's).

    python tests/reference/styleid_official_ref.py MODEL_DIR IN.npz OUT.npz

Two official programs of jiwoogit/StyleID at d4ea655 (the stored snapshot read for this file):
  paper     run_styleid.py + ldm/models/diffusion/ddim.py (the LDM code behind the paper's numbers);
  diffusers diffusers_implementation/run_styleid_diffusers.py (the only version for SD 2.x).
Control flow and formulas follow those files (their variable names kept where practical); every
change forced by running them on a diffusers folder sits in the ADAPTATION block below.

IN.npz: variant ('paper' | 'diffusers'), content uint8 [B, H, W, 3] (stylised one at a time, as the
official loops), style uint8 [H', W', 3]; optional: steps (paper --ddim_inv_steps = --save_feat_steps,
default 50; diffusers --ddim_steps, default 20), start_step (paper only, default 49), gamma (0.75), T (1.5),
layers (official output-block indices, comma-joined; default paper '6,7,8,9,10,11', diffusers
'7,8,9,10,11'), adain (1), inject (1); paper only, the posterior noise: style_noise [1, 4, h, w] and
content_noise [B, 4, h, w] (default: none, the posterior mode).
OUT.npz: latents (clean stylised latents [B, 4, h, w]), images (uint8), z_T (start latents of sampling),
z_c / z_s (inverted content / style latents), inv_labels / sample_labels (UNet timestep labels in call
order, of the style inversion and of the first content's sampling), inv_alpha_next (alpha-bar each
inversion step lands on), layers (the diffusers attn1 modules used).
"""

from __future__ import annotations

import sys

import numpy as np
import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline

DEFAULTS = {
    "paper": dict(steps=50, start_step=49, gamma=0.75, T=1.5, layers="6,7,8,9,10,11"),  # run_styleid.py::main
    "diffusers": dict(steps=20, start_step=None, gamma=0.75, T=1.5, layers="7,8,9,10,11"),  # config.py::get_args
}

# ------------------------------------------------------------------------------------------- ADAPTATION
# Everything that differs from the official files because this runs a diffusers folder, in one place:
# 1. UNet: diffusers' UNet2DConditionModel with the empty-prompt context; the LDM code's
#    model.apply_model(x, t, uc) is `Model.eps`. A v-prediction model (SD 2.x) gives v; the official
#    formulas take eps, so v -> eps = sqrt(a) v + sqrt(1 - a) x at the alpha-bar `a` the official formula
#    gives x (paper: the LDM code has eps only; diffusers: the same as its sd_version == "2.1" branch).
# 2. Layers: official output-block index i is up_blocks[i // 3].attentions[i % 3] (LDM output_blocks and
#    diffusers' get_unet_layers agree on SD 1.x/2.x, 12 blocks). A smaller UNet keeps the last blocks:
#    i -> i - (12 - 3 * len(up_blocks)); indices below 0 or without attention are dropped, as the LDM
#    code skips output blocks without a SpatialTransformer.
# 3. VAE: diffusers variant: scaling_factor * posterior mode, as official. paper: scaling_factor * posterior
#    *sample* mean + std * eps as official (get_first_stage_encoding -> DiagonalGaussianDistribution.sample),
#    but eps given in IN.npz: the official draws torch.randn after seed_everything(22), style first, then the
#    contents in order; a numpy generator cannot give torch's numbers, so the test passes the noise jstyle drew.
# 4. Schedule: the folder's scheduler alphas_cumprod (diffusers computes it in float32; the LDM code in
#    float64, stored as float32). float32 on CPU (official: fp16 autocast / torch_dtype fp16 on CUDA).


class Model:
    """The UNet with the empty-prompt context: `eps(x, t, a)` is the official e_t (LDM apply_model), `raw(x, t)`
    the output in the model's own parameterisation (what scheduler.step takes)."""

    def __init__(self, unet, uc, prediction_type: str):
        self.unet, self.uc, self.kind = unet, uc, prediction_type

    def raw(self, x, t: int) -> torch.Tensor:
        return self.unet(x, t, encoder_hidden_states=self.uc.expand(x.shape[0], -1, -1)).sample

    def eps(self, x, t: int, a) -> torch.Tensor:
        out = self.raw(x, t)
        return a.sqrt() * out + (1 - a).sqrt() * x if self.kind == "v_prediction" else out


def attn_layers(unet, indices: list[int]) -> dict[int, str]:
    """Official output-block index -> diffusers attn1 module name (see ADAPTATION 2)."""
    n = len(unet.up_blocks)
    names = {}
    for i in indices:
        j = i - (12 - 3 * n)
        if j >= 0 and j // 3 < n and getattr(unet.up_blocks[j // 3], "attentions", None):
            names[i] = f"up_blocks.{j // 3}.attentions.{j % 3}.transformer_blocks.0.attn1"
    return names


def encode(vae, images: np.ndarray, noise: np.ndarray | None = None) -> torch.Tensor:
    x = torch.from_numpy(images.astype(np.float32).transpose(0, 3, 1, 2) / 127.5 - 1.0)
    dist = vae.encode(x).latent_dist
    z = dist.mode() if noise is None else dist.mean + dist.std * torch.from_numpy(np.asarray(noise, np.float32))
    return z * vae.config.scaling_factor


def decode(vae, z: torch.Tensor, rounding: str) -> np.ndarray:
    img = (vae.decode(z / vae.config.scaling_factor).sample / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    # paper save: Image.fromarray((255. * x).astype(np.uint8)) truncates; diffusers utils.py::denormalize rounds
    return (img * 255).round().astype(np.uint8) if rounding == "round" else (255.0 * img).astype(np.uint8)
# ----------------------------------------------------------------------------------------- /ADAPTATION


class QKV:
    """attn1 processor holding both official hooks: record q/k/v per timestep (trigger_get_qkv) and
    replace them (trigger_modify_qkv): q_hat = gamma q_c + (1 - gamma) q_cs, K = K_s, V = V_s, softmax(T q k^T * scale).

    jiwoogit/StyleID d4ea655 diffusers_implementation/run_styleid_diffusers.py::style_transfer_module
    .__get_query_key_value / .__modify_self_attn_qkv and stable_diffusion.py::attention_op; the LDM code's
    ldm/modules/attention.py::CrossAttention.forward (q_injected, k_injected, v_injected, T) is the same map.
    """

    def __init__(self, name: str, state: dict):
        self.name, self.state = name, state

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **kw):
        q, k, v = (attn.head_to_batch_dim(f(hidden_states)) for f in (attn.to_q, attn.to_k, attn.to_v))
        t, temperature = self.state["t"], 1.0
        if self.state["get"]:
            self.state["features"].setdefault(self.name, {})[t] = (q, k, v)
        if self.state["modify"]:
            q_c, k_s, v_s = self.state["modify_features"][self.name][t]
            q = q_c * self.state["gamma"] + q * (1 - self.state["gamma"])
            k, v, temperature = k_s, v_s, self.state["T"]
        probs = attn.get_attention_scores(q * temperature, k, None)  # query * T == T on the logits
        out = attn.batch_to_head_dim(torch.bmm(probs, v))
        return attn.to_out[1](attn.to_out[0](out))


# jiwoogit/StyleID d4ea655, ldm/modules/diffusionmodules/util.py::make_ddim_timesteps ('uniform') + 1
def make_ddim_timesteps(num_ddim_timesteps: int, num_ddpm_timesteps: int = 1000) -> np.ndarray:
    c = num_ddpm_timesteps // num_ddim_timesteps
    return np.arange(0, num_ddim_timesteps) * c + 1


# jiwoogit/StyleID d4ea655, ldm/models/diffusion/ddim.py::DDIMSampler.encode_ddim + reverse_ddim
# (c = None, unconditional_guidance_scale 1: e_t = apply_model(x, t, uc)), with run_styleid.py's
# ddim_sampler_callback storing the attn features and z_enc under the step's own t.
def encode_ddim(model, img, num_steps, end_step, acp, state, log):
    T = 1000
    c = T // num_steps
    time_steps = range(1, T, c)
    steps = list(range(1, T + c, c))
    steps[-1] = 999
    z_enc = {}
    for i, t in enumerate(time_steps):
        if i > end_step:
            break
        state["t"] = t
        a_t, a_next = acp[t], acp[steps[i + 1]]
        e_t = model.eps(img, t, a_t)  # the latent at level t, the model at its own label t
        pred_x0 = (img - (1 - a_t).sqrt() * e_t) / a_t.sqrt()
        img = a_next.sqrt() * pred_x0 + (1.0 - a_next).sqrt() * e_t
        z_enc[t] = img  # save_feature_map(xt, 'z_enc', t): the latent after the step, stored under t
        log.append((t, float(a_next)))
    return img, z_enc


# jiwoogit/StyleID d4ea655, ldm/models/diffusion/ddim.py::DDIMSampler.sample -> ddim_sampling -> p_sample_ddim
# (eta 0, no CFG, x_T given), with run_styleid.py::feat_merge's 50 entries (features none for i < 50 - start_step;
# attention.py applies T only with injected q/k).
def ddim_sampling(model, x_T, S, start_step, acp, state, inject, log):
    ddim_timesteps = torch.from_numpy(make_ddim_timesteps(S))
    ddim_alphas = acp[ddim_timesteps]
    ddim_alphas_prev = torch.cat([acp[:1], acp[ddim_timesteps[:-1]]])  # make_ddim_sampling_parameters
    time_range = ddim_timesteps.flip(0)
    total_steps = len(ddim_timesteps)
    img = x_T
    for i, step in enumerate(time_range.tolist()):
        index = total_steps - i - 1
        if index >= start_step:
            continue
        state.update(t=step, modify=inject and i >= 50 - start_step)  # feat_merge: range(50), i < (50 - start_step)
        a_t, a_prev = ddim_alphas[index], ddim_alphas_prev[index]
        e_t = model.eps(img, step, a_t)
        pred_x0 = (img - (1 - a_t).sqrt() * e_t) / a_t.sqrt()
        img = a_prev.sqrt() * pred_x0 + (1.0 - a_prev).sqrt() * e_t
        log.append(step)
    state["modify"] = False
    return img


# jiwoogit/StyleID d4ea655, run_styleid.py::adain (dims [0, 2, 3], unbiased std, no epsilon)
def adain_paper(cnt_feat, sty_feat):
    cnt_mean, cnt_std = cnt_feat.mean(dim=[0, 2, 3], keepdim=True), cnt_feat.std(dim=[0, 2, 3], keepdim=True)
    sty_mean, sty_std = sty_feat.mean(dim=[0, 2, 3], keepdim=True), sty_feat.std(dim=[0, 2, 3], keepdim=True)
    return ((cnt_feat - cnt_mean) / cnt_std) * sty_std + sty_mean


# jiwoogit/StyleID d4ea655, run_styleid.py::main (one style; the contents one at a time)
def run_paper(model, vae, acp, content, style, opt, state, trace):
    ddim_inversion_steps = save_feature_timesteps = ddim_steps = opt["steps"]
    start_step = opt["start_step"]
    time_range = np.flip(make_ddim_timesteps(ddim_steps))
    end_step = int(time_range[ddim_inversion_steps - 1 - start_step])  # a timestep label used as a step bound
    assert save_feature_timesteps == ddim_steps  # so every inversion step is a callback step

    def invert(latent, log):
        state.update(get=True, features={})
        _, z_enc = encode_ddim(model, latent, ddim_inversion_steps, end_step, acp, state, log)
        state["get"] = False
        return z_enc[int(time_range[0])], state["features"]  # feat_maps[0]['z_enc']

    noise = opt.get("style_noise"), opt.get("content_noise")
    sty_z_enc, sty_feat = invert(encode(vae, style[None], noise[0]), trace["inv"])
    out = []
    for k, image in enumerate(content):
        cnt_z_enc, cnt_feat = invert(encode(vae, image[None], None if noise[1] is None else noise[1][k:k + 1]), [])
        adain_z_enc = adain_paper(cnt_z_enc, sty_z_enc) if opt["adain"] else cnt_z_enc
        # feat_merge: q from the content, k and v from the style, under the same t
        state["modify_features"] = {n: {t: (cnt_feat[n][t][0], sty_feat[n][t][1], sty_feat[n][t][2])
                                        for t in sty_feat[n]} for n in sty_feat}
        z = ddim_sampling(model, adain_z_enc, ddim_steps, start_step, acp, state, opt["inject"],
                          trace["sample"] if k == 0 else [])
        out.append((z, adain_z_enc, cnt_z_enc))
    return out, sty_z_enc


# jiwoogit/StyleID d4ea655, diffusers_implementation/run_styleid_diffusers.py::style_transfer_module.invert_process
def invert_process(model, scheduler, cur_latent, state, log):
    timesteps = reversed(scheduler.timesteps)
    num_inference_steps = len(scheduler.timesteps)
    acp = scheduler.alphas_cumprod
    for i in range(0, num_inference_steps):
        t = int(timesteps[i])
        state["t"] = t  # self.cur_t
        current_t = max(0, t - (1000 // num_inference_steps))
        next_t = t
        alpha_t, alpha_t_next = acp[current_t], acp[next_t]
        noise_pred = model.eps(cur_latent, t, alpha_t)  # the latent at level current_t, the model at label t
        cur_latent = (cur_latent - (1 - alpha_t).sqrt() * noise_pred) * (alpha_t_next.sqrt() / alpha_t.sqrt()) \
            + (1 - alpha_t_next).sqrt() * noise_pred
        log.append((t, float(alpha_t_next)))
    return cur_latent


# jiwoogit/StyleID d4ea655, diffusers_implementation/run_styleid_diffusers.py::style_transfer_module.reverse_process
def reverse_process(model, scheduler, x, state, log):
    for t in scheduler.timesteps:
        state["t"] = int(t)  # self.cur_t
        x = scheduler.step(model.raw(x, t), t, x).prev_sample  # DDIM, eta 0, the model's own parameterisation
        log.append(int(t))
    return x


# jiwoogit/StyleID d4ea655, diffusers_implementation/run_styleid_diffusers.py::__main__ (one content at a time)
def run_diffusers(model, vae, scheduler, content, style, opt, state, trace):
    scheduler.set_timesteps(opt["steps"])
    state.update(get=True, features={})
    style_latent = invert_process(model, scheduler, encode(vae, style[None]), state, trace["inv"])
    style_features = state["features"]
    out = []
    for k, image in enumerate(content):
        state.update(get=True, features={})
        content_latent = invert_process(model, scheduler, encode(vae, image[None]), state, [])
        content_features = state["features"]
        state["modify_features"] = {n: {int(t): (content_features[n][int(t)][0], style_features[n][int(t)][1],
                                                 style_features[n][int(t)][2]) for t in scheduler.timesteps}
                                    for n in style_features}
        state.update(get=False, modify=bool(opt["inject"]))
        if opt["adain"]:
            latent_cs = (content_latent - content_latent.mean(dim=(2, 3), keepdim=True)) \
                / (content_latent.std(dim=(2, 3), keepdim=True) + 1e-4) \
                * style_latent.std(dim=(2, 3), keepdim=True) + style_latent.mean(dim=(2, 3), keepdim=True)
        else:
            latent_cs = content_latent
        z = reverse_process(model, scheduler, latent_cs, state, trace["sample"] if k == 0 else [])
        state["modify"] = False
        out.append((z, latent_cs, content_latent))
    return out, style_latent


def stylize(pipe, variant: str, content: np.ndarray, style: np.ndarray, **overrides) -> dict:
    """Run one official variant (contents uint8 [B, H, W, 3], style uint8 [H', W', 3]); returns OUT.npz's arrays."""
    opt = {**DEFAULTS[variant], "adain": True, "inject": True, **overrides}
    unet, vae = pipe.unet, pipe.vae
    scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    uc = pipe.encode_prompt("", "cpu", 1, False)[0]  # tokenizer([""], padding="max_length") -> text_encoder
    model = Model(unet, uc, scheduler.config.prediction_type)
    names = attn_layers(unet, [int(i) for i in str(opt["layers"]).split(",")])
    state = {"t": None, "get": False, "modify": False, "gamma": float(opt["gamma"]), "T": float(opt["T"])}
    base = dict(unet.attn_processors)
    unet.set_attn_processor({**base, **{f"{n}.processor": QKV(n, state) for n in names.values()}})
    trace = {"inv": [], "sample": []}
    try:
        if variant == "paper":
            out, z_s = run_paper(model, vae, scheduler.alphas_cumprod, content, style, opt, state, trace)
        else:
            out, z_s = run_diffusers(model, vae, scheduler, content, style, opt, state, trace)
    finally:
        unet.set_attn_processor(base)
    z = torch.cat([o[0] for o in out])
    return dict(latents=z.numpy(), images=decode(vae, z, "trunc" if variant == "paper" else "round"),
                z_T=torch.cat([o[1] for o in out]).numpy(), z_c=torch.cat([o[2] for o in out]).numpy(),
                z_s=z_s.numpy(), inv_labels=np.array([t for t, _ in trace["inv"]]),
                inv_alpha_next=np.array([a for _, a in trace["inv"]]), sample_labels=np.array(trace["sample"]),
                layers=np.array(sorted(names.values())))


def load(model: str) -> StableDiffusionPipeline:
    # float32 explicitly: the tiny text encoder's config.json says float16 (see lora_interop.py)
    return StableDiffusionPipeline.from_pretrained(model, dtype=torch.float32, safety_checker=None,
                                                   requires_safety_checker=False)


def main(model: str, inp: str, out: str) -> None:
    torch.set_grad_enabled(False)
    with np.load(inp) as f:
        cfg = dict(f)
    variant = str(cfg.pop("variant"))
    content, style = cfg.pop("content"), cfg.pop("style")
    overrides = {k: (str(v) if k == "layers" else v if k.endswith("_noise") else v.item()) for k, v in cfg.items()}
    np.savez(out, **stylize(load(model), variant, content, style, **overrides))


if __name__ == "__main__":
    main(*sys.argv[1:4])
