"""DiffStyle as its authors' code runs it, transcribed to PyTorch + diffusers (checker env, never jstyle's).

    python tests/reference/diffstyle_official_ref.py MODEL_DIR IN.npz OUT.npz

Source: curryjung/DiffStyle_official at 744c59a: utils/diffusion_utils.py::denoising_step,
diffusion_latent.py::DiffStyle.diff_style / precompute_pairs_with_h, models/ddpm/diffusion.py::slerp and
Model.forward (the h-space branch), main.py (defaults) and the README's recipes. Control flow and formulas
follow those files (their variable names kept where practical); every change forced by running them on a
latent Stable Diffusion UNet sits in the ADAPTATION block below.

IN.npz: content uint8 [H, W, 3], style uint8 [H, W, 3]; optional: recipe ('artistic' | 'in-domain' |
'main', default 'artistic') and any of its keys to override (hs_coeff, t_noise, dt_lambda, dt_end, omega,
n_gen_step, n_inv_step, content_replace_step, t_0, user_defined_t_edit), seed (numpy noise, default 0).
OUT.npz: latents (clean), images (uint8), x_T (the style's inverted latent), and per generation step
(in order) t, t_next, replace (1 on content_replace steps), eta, closest_t (the content h used), unet_calls.
"""

from __future__ import annotations

import sys

import numpy as np
import torch
from diffusers import StableDiffusionPipeline

# main.py's argparse defaults, and the README's two recipes for diff_style (hs_coeff = h_gamma,
# t_noise = t_boost). user_defined_t_edit None -> 400 in diff_style.
MAIN = dict(hs_coeff=0.9, t_noise=0, dt_lambda=1.0, dt_end=950, omega=0.0, n_gen_step=1000, n_inv_step=40,
            content_replace_step=50, t_0=999, user_defined_t_edit=None)
RECIPES = {
    "main": MAIN,
    # README "#AFHQ": h_gamma 0.3, t_boost 200, n_gen_step 1000, n_inv_step 50, omega 0 (no --dt_lambda)
    "in-domain": {**MAIN, "hs_coeff": 0.3, "t_noise": 200, "n_inv_step": 50},
    # README "Harmonization-like style mixing with artistic references"
    "artistic": {**MAIN, "hs_coeff": 0.4, "n_inv_step": 1000},
}

# ------------------------------------------------------------------------------------------- ADAPTATION
# The official `models` is an unconditional pixel DDPM (models/ddpm/diffusion.py::Model) whose forward
# returns (et, et_modified, delta_h, middle_h) from one down path and two up paths (h and h2). Here:
# - the UNet is diffusers' UNet2DConditionModel on VAE latents, with the empty-prompt context, no CFG;
# - h (middle_h) is unet.mid_block's output; et_modified is the UNet re-run with the mid-block output
#   replaced by h2 (a forward hook; the down path is deterministic, so h is the same in both runs);
# - a v-prediction model's output becomes eps = sqrt(a_t) v + sqrt(1 - a_t) x (a_t = alpha-bar[t]: both the
#   official inversion and generation call the model at the latent's own level t);
# - the schedule is the folder's alphas_cumprod (SD: scaled_linear 0.00085..0.012), `b` its betas;
# - torch.randn_like(xt) is `randn(shape)`: numpy default_rng(seed).standard_normal, float32, one draw per
#   official randn_like call (also those whose result the official then discards).
class SDModel:
    def __init__(self, unet, uc, scheduler):
        self.unet, self.uc = unet, uc
        self.kind = scheduler.config.prediction_type
        self.acp = scheduler.alphas_cumprod
        self.calls = 0
        self._h2 = None
        self._middle_h = None
        self.handle = unet.mid_block.register_forward_hook(self._hook)  # removed by transfer()

    def _hook(self, module, args, output):
        self._middle_h = output
        return output if self._h2 is None else self._h2(output)

    def _eps(self, x, t):
        self.calls += 1
        out = self.unet(x, int(t), encoder_hidden_states=self.uc.expand(x.shape[0], -1, -1)).sample
        if self.kind == "v_prediction":
            a = self.acp[int(t)]
            return a.sqrt() * out + (1 - a).sqrt() * x
        return out

    def __call__(self, x, t, index=None, t_edit=400, hs_coeff=(1.0, 1.0), delta_h=None):
        """models/ddpm/diffusion.py::Model.forward with delta_h given (the DiffStyle branch, use_mask False)."""
        et = self._eps(x, t)
        middle_h = self._middle_h
        et_modified = None
        if index is not None:
            if int(t) >= t_edit:
                def h2_of(h):
                    h_norm = torch.norm(h.reshape(h.shape[0], -1), dim=1)[:, None, None, None]
                    delta_h_norm = torch.norm(delta_h.reshape(h.shape[0], -1), dim=1)[:, None, None, None]
                    normalized_delta_h = h_norm * delta_h / delta_h_norm
                    return slerp(1.0 - hs_coeff[0], h, normalized_delta_h)

                self._h2 = h2_of
                try:
                    et_modified = self._eps(x, t)
                finally:
                    self._h2 = None
            else:
                et_modified = et  # h2 = h: the second up path computes the same et
        return et, et_modified, delta_h, middle_h
# ----------------------------------------------------------------------------------------- /ADAPTATION


# curryjung/DiffStyle_official 744c59a, models/ddpm/diffusion.py::slerp (no clamping, float32)
def slerp(t, v0, v1):
    _shape = v0.shape
    v0_origin, v1_origin = v0.clone(), v1.clone()
    v0 = v0 / torch.norm(v0.reshape(_shape[0], -1), dim=1)[:, None, None, None]
    v1 = v1 / torch.norm(v1.reshape(_shape[0], -1), dim=1)[:, None, None, None]
    dot = torch.sum(v0.reshape(_shape[0], -1) * v1.reshape(_shape[0], -1), dim=1)
    theta_0 = torch.acos(dot)
    sin_theta_0 = torch.sin(theta_0)
    theta_t = theta_0 * t
    sin_theta_t = torch.sin(theta_t)
    s0 = (torch.sin(theta_0 - theta_t) / sin_theta_0)[:, None, None, None]
    s1 = (sin_theta_t / sin_theta_0)[:, None, None, None]
    return s0 * v0_origin + s1 * v1_origin


# curryjung/DiffStyle_official 744c59a, utils/diffusion_utils.py::denoising_step (sampling_type 'ddim',
# learn_sigma False, image_space_noise 0, ignore_timestep False, use_mask False)
def denoising_step(xt, t, t_next, *, models, b, randn, eta=0.0, index=None, t_edit=0, hs_coeff=(1.0,),
                   delta_h=None, dt_lambda=1, dt_end=999, omega=0.0):
    et, et_modified, delta_h, middle_h = models(xt, t, index=index, t_edit=t_edit, hs_coeff=hs_coeff,
                                                delta_h=delta_h)
    acp = (1.0 - b).cumprod(dim=0)
    at = acp[t]
    at_next = torch.ones_like(at) if t_next == -1 else acp[t_next]

    if index is not None:
        x0_t = (xt - et_modified * (1 - at).sqrt()) / at.sqrt()
    else:
        x0_t = (xt - et * (1 - at).sqrt()) / at.sqrt()
    if eta == 0:
        xt_next = at_next.sqrt() * x0_t + (1 - at_next).sqrt() * et
    else:
        c1 = eta * ((1 - at / at_next) * (1 - at_next) / (1 - at)).sqrt()
        c2 = ((1 - at_next) - c1**2).sqrt()
        xt_next = at_next.sqrt() * x0_t + c2 * et + c1 * randn(xt.shape)

    if dt_lambda != 1 and t >= dt_end:
        xt_next = at_next.sqrt() * x0_t + (1 - at_next).sqrt() * et * dt_lambda

    if not omega or index is None:  # style calibration off (omega 0, the default) or a plain step
        return xt_next, x0_t, delta_h, middle_h

    new_P_xt = x0_t
    P_xt = (xt - et * (1 - at).sqrt()) / at.sqrt()
    # regularization (var): new_P_xt keeps its mean, takes P_xt's std
    var_P_xt = P_xt - P_xt.mean(dim=[1, 2, 3])[:, None, None, None]
    var_new_P_xt = new_P_xt - new_P_xt.mean(dim=[1, 2, 3])[:, None, None, None]
    new_P_xt = new_P_xt.mean(dim=[1, 2, 3])[:, None, None, None] \
        + var_new_P_xt * (var_P_xt.std(dim=[1, 2, 3]) / var_new_P_xt.std(dim=[1, 2, 3]))[:, None, None, None]
    dx0 = new_P_xt - P_xt
    det = et_modified - et
    w = omega
    dx = at.sqrt() * dx0 + w * (1 - at).sqrt() * det
    xt = xt + dx  # official: xt += dx (in place on the caller's tensor, which it then rebinds)
    et, _, _, _ = models(xt, t)  # the UNet again on the shifted latent, without injection
    x0_t = (xt - et * (1 - at).sqrt()) / at.sqrt()
    if eta == 0:
        xt_next = at_next.sqrt() * x0_t + (1 - at_next).sqrt() * et
    else:
        c1 = eta * ((1 - at / at_next) * (1 - at_next) / (1 - at)).sqrt()
        c2 = ((1 - at_next) - c1**2).sqrt()
        xt_next = at_next.sqrt() * x0_t + c2 * et + c1 * randn(xt.shape)
    return xt_next, x0_t, delta_h, middle_h


def seq_of(n_step: int, t_0: int) -> list[int]:
    """diffusion_latent.py: seq = [int(s + 1e-6) for s in np.linspace(0, 1, n_step) * t_0]."""
    return [int(s + 1e-6) for s in list(np.linspace(0, 1, n_step) * t_0)]


# curryjung/DiffStyle_official 744c59a, diffusion_latent.py::DiffStyle.precompute_pairs_with_h (no file cache)
def precompute_pairs_with_h(models, b, x0, args, randn):
    seq_inv = seq_of(args["n_inv_step"], args["t_0"])
    seq_inv_next = [-1] + list(seq_inv[:-1])
    h_dic = {}
    x = x0.clone()
    for i, j in zip(seq_inv_next[1:], seq_inv[1:]):
        x, _, _, h = denoising_step(x, t=i, t_next=j, models=models, b=b, randn=randn, eta=0)
        h_dic[i] = h.detach().clone()
    return [x0, 0, x.clone(), h_dic]


# curryjung/DiffStyle_official 744c59a, diffusion_latent.py::DiffStyle.diff_style (one content, one style)
def diff_style(models, b, content_lat_pair, style_lat_pair, args, randn, log):
    seq_train = seq_of(args["n_gen_step"], args["t_0"])
    seq_train_next = [-1] + list(seq_train[:-1])
    if args["content_replace_step"] and args["content_replace_step"] != -1:
        seq_replace = seq_of(args["content_replace_step"], args["t_0"])
    else:
        seq_replace = seq_train
    t_edit = 400 if args["user_defined_t_edit"] is None else args["user_defined_t_edit"]

    def take_closest(input_list, value):
        return min(input_list, key=lambda x: abs(x - value))

    inv_timesteps = sorted(list(content_lat_pair[3].keys()), reverse=True)
    x = style_lat_pair[2].clone()  # X_T: the style's inversion
    for i, j in zip(reversed(seq_train), reversed(seq_train_next)):
        closest_t = take_closest(inv_timesteps, i)
        delta_hs = content_lat_pair[3][closest_t]
        calls = models.calls
        if i in seq_replace:
            eta = 0 if i > args["t_noise"] else 1
            x, _, _, _ = denoising_step(x, t=i, t_next=j, models=models, b=b, randn=randn, eta=eta, index=0,
                                        hs_coeff=[1 - args["hs_coeff"]], delta_h=delta_hs,
                                        dt_lambda=args["dt_lambda"], dt_end=args["dt_end"], t_edit=t_edit,
                                        omega=args["omega"])
        else:
            eta = 0
            x, _, _, _ = denoising_step(x, t=i, t_next=j, models=models, b=b, randn=randn)
        log.append((i, j, int(i in seq_replace), eta, closest_t, models.calls - calls))
    return x


def numpy_randn(seed: int):
    rng = np.random.default_rng(seed)
    return lambda shape: torch.from_numpy(rng.standard_normal(tuple(shape)).astype(np.float32))


def transfer(pipe, content: np.ndarray, style: np.ndarray, recipe: str = "artistic", seed: int = 0,
             models=None, **overrides) -> dict:
    """DiffStyle of one content image (uint8 [H, W, 3]) with one style image; returns OUT.npz's arrays."""
    args = {**RECIPES[recipe], **overrides}
    vae = pipe.vae
    own = models is None
    if own:
        models = SDModel(pipe.unet, pipe.encode_prompt("", "cpu", 1, False)[0], pipe.scheduler)
    b = pipe.scheduler.betas
    randn = numpy_randn(seed)

    def latent(image):
        x = torch.from_numpy(image[None].astype(np.float32).transpose(0, 3, 1, 2) / 127.5 - 1.0)
        return vae.encode(x).latent_dist.mode() * vae.config.scaling_factor

    log: list = []
    try:
        style_lat_pair = precompute_pairs_with_h(models, b, latent(style), args, randn)
        content_lat_pair = precompute_pairs_with_h(models, b, latent(content), args, randn)
        x = diff_style(models, b, content_lat_pair, style_lat_pair, args, randn, log)
    finally:
        if own:
            models.handle.remove()
    img = (vae.decode(x / vae.config.scaling_factor).sample / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    cols = dict(zip(("t", "t_next", "replace", "eta", "closest_t", "unet_calls"), np.array(log).T))
    return dict(latents=x.numpy(), images=(img * 255).round().astype(np.uint8), x_T=style_lat_pair[2].numpy(), **cols)


def main(model: str, inp: str, out: str) -> None:
    torch.set_grad_enabled(False)
    with np.load(inp) as f:
        cfg = dict(f)
    content, style = cfg.pop("content"), cfg.pop("style")
    recipe = str(cfg.pop("recipe", "artistic"))
    overrides = {k: v.item() for k, v in cfg.items()}
    if overrides.get("user_defined_t_edit", 0) < 0:
        overrides["user_defined_t_edit"] = None  # -1 in IN.npz: the official default (None -> 400)
    pipe = StableDiffusionPipeline.from_pretrained(model, dtype=torch.float32, safety_checker=None,
                                                   requires_safety_checker=False)
    np.savez(out, **transfer(pipe, content, style, recipe, **overrides))


if __name__ == "__main__":
    main(*sys.argv[1:4])
