"""Visual Style Prompting (Jeong et al., 2024): text-to-image whose late self-attention layers take their keys and
values from a reference image's own denoising path.

As naver-ai/Visual-Style-Prompting @ 723dd4b runs it for a real reference (vsp_real_script.py,
pipelines/pipeline_stable_diffusion_xl.py::__call__ with `image`, pipelines/inverted_ve_pipeline.py::
CrossFrameAttnProcessor / swapping_attention, schedulers/scheduling_ddim.py::step):
  - the reference is not DDIM-inverted: at every step its row of the batch is replaced by a fresh posterior sample
    of its VAE latent noised to the step's level, z_t = sqrt(a_t) z_0 + sqrt(1 - a_t) eps (prepare_img_latents
    with add_noise, new noise each step);
  - the batch is [reference, images] under CFG ([uncond; cond] chunks); in the swapped layers every row of a chunk
    attends with that chunk's reference row's K and V (swapping_attention): the uncond images take the reference's
    uncond K, V, the cond images its cond K, V (the reference's cond prompt: its caption); queries stay their own;
  - the reference row's prediction is its cond one alone (use_prompt_as_null: noise_pred[0] = noise_pred_text[0]);
  - colour calibration: on the steps with window_end < t < start (150 > t > 100 by default), every row's
    predicted x0 gets, per channel, the mean and std of the reference row's predicted x0 (fit_mode "channel");
  - all 50 DDIM steps swap (activate_step 50), guidance 7.0 (--guidance_scale).

The one marked adaptation, the layers (SDXL -> SD 2.1): the official list, ACTIVATE_LAYER_CANDIDATE[128:140], is
every self-attention of SDXL's up_blocks.1, its *last up-block with attention* (up_blocks.2 has none), 64x64 tokens
at 1024 px. The same rule on SD 2.1 gives up_blocks.3.attentions.0-2 (64x64 tokens at 512 px: the same token
count at each model's native size, and the decoder's last, highest-resolution attention stage, which the paper's
'late self-attention layers' name); the rule reproduces the official list on SDXL and fits any UNet (`vsp_layers`).
Other changes, forced by SD 2.1 and jstyle: the uncond context is the empty prompt's encoding (SDXL zeroes its
negative embeddings, force_zeros_for_empty_prompt, which SD 2.x has not); the reference's prompt is "" (the
official script captions the reference with BLIP-2, which jstyle does not ship); every draw comes from one seeded
generator (the official reference noise is unseeded); the reference is read at the run's size (official: 1024,
SDXL's).

Negative visual query guidance (variant `nvqg`, StyleKeeper, Jeong et al., ICCV 2025): the paper's equations were not in
the stored pages this was written from; its abstract says NVQG "employs negative score by intentionally simulating
content leakage scenarios that swap queries instead of key and values of self-attention layers from visual style
prompts", and StyleKeeper's code (naver-ai/StyleKeeper @ ac1219c) is VSP's without it. jstyle follows the one
public implementation found, Slickytail/ComfyUI-StyleGuide @ 544992e (attention.py::Attn1Replace): in the swapped
layers the uncond pass's image rows take the reference's queries with their own keys and values, the cond pass
swaps K, V as VSP, and CFG runs as usual, so the guidance pushes away from the leak-simulating prediction:
    eps = eps(z, {}; Q <- Q_ref) + w (eps(z, c; K, V <- K_ref, V_ref) - eps(z, {}; Q <- Q_ref))
It is that replication's reading, not the paper's equation, and is off by default.

    `--references k` pools k references: k reference rows, and the images attend to all of their K, V
    concatenated along the token axis; colour calibration takes the pooled statistics of their predicted x0.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from ..errors import ConfigError, InputError

if TYPE_CHECKING:
    import jittor as jt

__all__ = ["VSPConfig", "vsp_layers", "calibrate", "reference_noise", "vsp_latents", "vsp", "inject"]


@dataclass(frozen=True)
class VSPConfig:
    """Visual Style Prompting settings (the official real-reference defaults)."""

    steps: int = field(default=50, metadata={"help": "VSP DDIM steps (the pipeline's num_inference_steps)"})
    guidance: float = field(default=7.0, metadata={"help": "VSP classifier-free guidance (vsp_real_script.py)"})
    activate_step: int = field(default=50, metadata={"help": "VSP swaps keys and values on step indices 0.."
                                                              "ACTIVATE_STEP (official 50: every step)"})
    color_cal_start_t: int = field(default=150, metadata={"help": "VSP colour calibration on timesteps below this "
                                                                  "(--color_cal_start_t)"})
    color_cal_window_size: int = field(default=50, metadata={"help": "VSP colour calibration window: timesteps "
                                                                     "above start - window (0 = off)"})
    variant: str = field(default="vsp", metadata={"help": "vsp (the official code) or nvqg (with negative visual "
                                                          "query guidance, StyleKeeper's idea as a third-party "
                                                          "replication reads it; see jstyle/methods/vsp.py)"})
    reference_prompt: str = ""  # the reference row's cond prompt (official: a BLIP-2 caption of the reference)
    layers: tuple[str, ...] | None = None  # module prefixes of the swapped attn1 layers (None: vsp_layers' rule)

    def __post_init__(self):
        if isinstance(self.steps, bool) or not 1 <= int(self.steps) <= 1000:
            raise ConfigError(f"VSP steps must be in 1..1000, got {self.steps}")
        if self.variant not in ("vsp", "nvqg"):
            raise ConfigError(f"VSP variant '{self.variant}' unknown; use vsp or nvqg")
        if self.guidance < 0 or self.color_cal_window_size < 0 or self.activate_step < -1:
            raise ConfigError("VSP guidance, color_cal_window_size must be >= 0 and activate_step >= -1")

    @property
    def calibration(self) -> tuple[int, int]:
        """(end, start): timesteps t with end < t < start are calibrated (scheduling_ddim.py::step)."""
        return self.color_cal_start_t - self.color_cal_window_size, self.color_cal_start_t


def vsp_layers(unet, layers: tuple[str, ...] | None = None) -> list[str]:
    """Names of the swapped attn1 layers: under `layers`' prefixes, else every attn1 of the last up-block that has
    self-attention (SDXL: up_blocks.1, the official ACTIVATE_LAYER_CANDIDATE[128:140]; SD 1.x/2.x: up_blocks.3)."""
    from .styleid import resolve_layers

    if layers is not None:
        return resolve_layers(unet, layers)
    attn1 = [n for n in resolve_layers(unet, tuple(f"up_blocks.{i}" for i in range(len(unet.up_blocks))
                                                   if _has_attn1(unet, i)))]
    last = max(int(n.split(".")[1]) for n in attn1)
    return [n for n in attn1 if n.startswith(f"up_blocks.{last}.")]


def _has_attn1(unet, i: int) -> bool:
    from .styleid import _self_attention_layers

    return any(n.startswith(f"up_blocks.{i}.") for n in _self_attention_layers(unet))


def calibrate(x0: jt.Var, reference: jt.Var) -> jt.Var:
    """Colour calibration of predicted x0 [B, C, h, w] to the reference rows' per-channel statistics (pooled over
    the rows of `reference` [k, C, h, w]); unbiased std, as torch.std."""
    from ..ops import mean_std

    # x0 <- (x0 - mean(x0)) / (std(x0) + 1e-8) * std(x0_ref) + mean(x0_ref)   (scheduling_ddim.py::step, "channel")
    ref = reference.transpose(1, 0, 2, 3).reshape(1, reference.shape[1], 1, -1)  # k = 1: the row's own positions
    centred = x0 - x0.mean(dims=(2, 3), keepdims=True)
    _, s = mean_std(centred, dims=(2, 3))
    mr, sr = mean_std(ref, dims=(2, 3))
    return centred / (s + 1e-8) * sr + mr


def reference_noise(rng: np.random.Generator, steps: int, shape: tuple[int, ...]) -> np.ndarray:
    """The reference rows' draws per step, [steps, 2, k, C, h, w]: [0] the posterior sample's eps, [1] the
    forward-noise eps (official: a fresh VAE posterior sample and fresh noise every step)."""
    return rng.standard_normal((steps, 2, *shape), dtype=np.float64).astype(np.float32)


def vsp_latents(pipe, references: np.ndarray, prompt: str, latents: jt.Var, noise: np.ndarray,
                cfg: VSPConfig = VSPConfig()) -> jt.Var:
    """VSP sampling: uint8 references [k, H, W, 3], start latents [B, C, h, w] of the images, `noise` from
    `reference_noise` -> the images' clean latents [B, C, h, w]."""
    import jittor as jt

    from ..pipeline import uint8_batch
    from .inversion import make_scheduler
    from .styleid import _hooked
    from .vsp_processors import VSPProcessor

    refs = uint8_batch(references)
    k, b = refs.shape[0], latents.shape[0]
    x = jt.array(refs.astype(np.float32).transpose(0, 3, 1, 2) / 127.5 - 1.0)
    with jt.no_grad():
        posterior = pipe.vae.encode(x.cast(pipe.vae_dtype))
    mean, std, scale = posterior.mean, posterior.std, pipe.vae.scaling_factor
    if tuple(noise.shape[3:]) != tuple(mean.shape[1:]) or tuple(latents.shape[1:]) != tuple(mean.shape[1:]):
        raise InputError(f"VSP: reference latents {tuple(mean.shape[1:])}, image latents {tuple(latents.shape[1:])}"
                         f" and noise {tuple(noise.shape[3:])} must agree; read references at the image size")
    scheduler = make_scheduler(pipe, cfg.steps)
    if noise.shape[0] < len(scheduler.timesteps) or noise.shape[2] != k:
        raise InputError(f"VSP noise of shape {noise.shape} for {len(scheduler.timesteps)} steps and {k} references")
    empty, text = pipe.encode_prompt(""), pipe.encode_prompt([cfg.reference_prompt, prompt])
    context = jt.concat([empty] * (k + b) + [text[:1]] * k + [text[1:]] * b)  # [uncond rows; cond rows]
    layers = vsp_layers(pipe.unet, cfg.layers)
    swappers = [VSPProcessor(name, k, negative_query=cfg.variant == "nvqg") for name in layers]
    (end, start), acp = cfg.calibration, scheduler.alphas_cumprod
    with jt.no_grad(), _hooked(pipe.unet, swappers):
        for i, t in enumerate(int(t) for t in scheduler.timesteps):
            for s in swappers:
                s.active = i <= cfg.activate_step  # CrossFrameAttnProcessor's activate_step_indices [[0, N]]
            eps_post, eps_t = (jt.array(noise[i, j]) for j in (0, 1))
            z0 = (mean + std * eps_post.cast(mean.dtype)) * scale  # retrieve_latents: latent_dist.sample()
            zt = np.sqrt(acp[t]) * z0.cast(latents.dtype) + np.sqrt(1.0 - acp[t]) * eps_t.cast(latents.dtype)
            rows = jt.concat([zt, latents])  # latents[0] = zt[0]: the reference row, re-noised each step
            uncond, cond = pipe.unet(jt.concat([rows, rows]), t, context).chunk(2)
            out = uncond + cfg.guidance * (cond - uncond)  # CFG: e_u + w (e_c - e_u)
            out = jt.concat([cond[:k], out[k:]])  # use_prompt_as_null: the reference row's cond prediction
            x0, eps = scheduler.predict_x0_eps(out, t, rows)
            if scheduler.config.clip_sample:
                r = scheduler.config.clip_sample_range
                x0 = x0.clamp(-r, r)
            if end < t < start:
                x0 = calibrate(x0, x0[:k])
            a_prev = scheduler.alpha_prev(t)
            latents = (np.sqrt(a_prev) * x0 + np.sqrt(1.0 - a_prev) * eps)[k:]  # DDIM, eta 0
            latents.sync()
    return latents


def vsp(pipe, references: np.ndarray, prompts: str | list[str], cfg: VSPConfig = VSPConfig(),
        seed: int | tuple[int, ...] = 0, size: int = 512) -> np.ndarray:
    """Images of `prompts` (one each) in the style of uint8 references [k, size, size, 3] -> uint8 [B, size, size,
    3]. Start latents, then the reference draws, from default_rng(seed)."""
    from ..schedulers.common import batch_randn

    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    rng = np.random.default_rng(seed)
    f = pipe.vae_scale_factor
    shape = (pipe.unet.config.get("in_channels", 4), size // f, size // f)
    out = []
    for prompt in prompts:  # the prompts one at a time, as the batch is [references, one image]
        latents = batch_randn((1, *shape), rng, pipe.dtype)
        noise = reference_noise(rng, cfg.steps, (len(references), *shape))
        out.append(pipe.decode_latents(vsp_latents(pipe, references, prompt, latents, noise, cfg))[0])
    return np.stack(out)


def inject(pipe, job) -> tuple[np.ndarray, dict]:
    """run_all's stage (a jstyle.methods.registry.InjectJob): VSP text-to-image of the job's prompt with the
    references its rule and --references pick, read at --reference-size (auto: the run's size)."""
    from .reference import choose_references, parse_count, parse_size, read_reference

    refs = choose_references(job.content, job.references, job.reference_rule, parse_count(job.reference_count),
                             seed=job.seed, style=job.style, prompt=job.obj)
    images = [read_reference(r, parse_size(job.reference_size, job.size)) for r in refs]
    if any(im.shape[:2] != (job.size, job.size) for im in images):
        raise InputError(f"VSP denoises the references in the image's batch: they must be {job.size}x{job.size} "
                         f"(--size); use --reference-size auto or {job.size}, not {job.reference_size}")
    images = np.stack(images)
    image = vsp(pipe, images, job.prompt, job.settings, seed=job.noise, size=job.size)[0]  # the image's own noise
    return image, {"reference": ",".join(r.name for r in refs)}
