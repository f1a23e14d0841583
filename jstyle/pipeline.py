"""A loaded Stable Diffusion folder: tokenizer, text encoder, UNet, VAE and the scheduler config."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jittor as jt
import numpy as np

from .errors import ConfigError, InputError, WeightsError
from .loading import load_model, read_json
from .models.autoencoder_kl import AutoencoderKL, DiagonalGaussianDistribution
from .models.clip_text import CLIPTextModel
from .models.unet_2d_condition import UNet2DConditionModel
from .ops import as_dtype
from .schedulers import get_scheduler
from .schedulers.common import Generators, batch_randn
from .tokenizer import CLIPTokenizer

__all__ = ["StableDiffusion", "StepCallback", "denoise", "load_pipeline", "resolve_vae_dtype", "uint8_batch"]

StepCallback = Callable[[int, float, jt.Var], None]  # callback(step index, timestep, latents) before the UNet

# component -> accepted class names (as written in model_index.json) -> jstyle class
_MODEL_CLASSES = {
    "unet": ({"UNet2DConditionModel"}, UNet2DConditionModel),
    "vae": ({"AutoencoderKL"}, AutoencoderKL),
    "text_encoder": ({"CLIPTextModel"}, CLIPTextModel),
}
_TOKENIZER_CLASSES = {"CLIPTokenizer", "CLIPTokenizerFast"}


@dataclass
class StableDiffusion:
    """The parts of one Stable Diffusion 1.x/2.x model, plus small helpers shared by the methods."""

    tokenizer: CLIPTokenizer
    text_encoder: CLIPTextModel
    unet: UNet2DConditionModel
    vae: AutoencoderKL
    scheduler_config: dict[str, Any]
    path: Path
    dtype: str = "float32"  # the UNet's and the text encoder's
    vae_dtype: str | None = None  # None: `dtype`; "float32" under a float16 UNet avoids the VAE's fp16 overflow

    def __post_init__(self) -> None:
        if self.vae_dtype is None:
            self.vae_dtype = self.dtype

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.get("block_out_channels", (0,) * 4)) - 1)

    @property
    def prediction_type(self) -> str:
        return self.scheduler_config.get("prediction_type", "epsilon")

    def load_textual_inversion(self, path: str | Path, token: str | None = None) -> dict[str, list[int]]:
        """diffusers' `load_textual_inversion`: a learned_embeds.safetensors file (or its folder) into the tokenizer
        and the text encoder; returns the ids per token (jstyle.textual_inversion)."""
        from .textual_inversion import load_textual_inversion

        return load_textual_inversion(self, path, token)

    def encode_prompt(self, prompts: str | list[str]) -> jt.Var:
        """Text-encoder hidden states [B, 77, D] for prompts padded to the tokenizer's max length."""
        ids = self.tokenizer(prompts, padding="max_length", truncation=True)["input_ids"]
        with jt.no_grad():
            return self.text_encoder(jt.array(np.asarray(ids, dtype=np.int64))).last_hidden_state

    def prompt_context(self, prompts: str | list[str], negative_prompt: str | list[str] = "",
                       guidance_scale: float = 7.5) -> tuple[jt.Var, int]:
        """(context, number of prompts): text embeddings of [negatives; prompts] under classifier-free guidance
        (guidance_scale > 1), else of the prompts alone; one-line InputErrors for unusable prompts or scales."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompts:
            raise InputError("no prompts given")
        if guidance_scale < 0:
            raise InputError(f"guidance_scale must be >= 0, got {guidance_scale}")
        negatives = [negative_prompt] * len(prompts) if isinstance(negative_prompt, str) else list(negative_prompt)
        if len(negatives) != len(prompts):
            raise InputError(f"{len(negatives)} negative prompts for {len(prompts)} prompts; "
                             "give one per prompt or a single string")
        return self.encode_prompt(negatives + prompts if guidance_scale > 1.0 else prompts), len(prompts)

    def sampler(self, scheduler: str, num_inference_steps: int, eta: float = 0.0,
                generator: Generators | None = None) -> tuple[Any, dict[str, Any]]:
        """(scheduler, step kwargs): scheduler `scheduler` (a name in jstyle.schedulers.SCHEDULERS) from this
        model's scheduler_config.json with `num_inference_steps` timesteps set, and the keyword arguments of its
        step() (the generator, default np.random.default_rng(0); eta for DDIM, the only one that takes it)."""
        n_train = int(self.scheduler_config.get("num_train_timesteps", 1000))
        if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, (int, np.integer)) \
                or not 1 <= num_inference_steps <= n_train:
            raise InputError(f"num_inference_steps must be an integer in 1..{n_train}, got {num_inference_steps!r}")
        if eta and scheduler != "ddim":
            raise InputError(f"eta is a DDIM setting; scheduler '{scheduler}' does not take it")
        sched = get_scheduler(scheduler, self.scheduler_config)
        sched.set_timesteps(num_inference_steps)
        generator = np.random.default_rng(0) if generator is None else generator
        return sched, {"generator": generator, **({"eta": eta} if scheduler == "ddim" else {})}

    def denoise(
        self,
        latents: jt.Var,
        context: jt.Var | Callable[[int, float], jt.Var],
        scheduler: Any,
        timesteps: Sequence[float] | np.ndarray | None = None,
        guidance_scale: float = 1.0,
        step_kwargs: dict[str, Any] | None = None,
        callback: StepCallback | None = None,
        progress: bool = False,
    ) -> jt.Var:
        """`denoise` with this model's UNet: the one denoising loop of text-to-image, img2img, StyleID, DiffStyle."""
        return denoise(self.unet, latents, context, scheduler, timesteps, guidance_scale, step_kwargs, callback,
                       progress)

    def text_to_image(
        self,
        prompts: str | list[str],
        negative_prompt: str | list[str] = "",
        num_inference_steps: int = 25,
        guidance_scale: float = 7.5,
        height: int = 512,
        width: int = 512,
        generator: np.random.Generator | Sequence[np.random.Generator] | None = None,
        latents: jt.Var | None = None,
        progress: bool = False,
        scheduler: str = "ddim",
        eta: float = 0.0,
    ) -> np.ndarray:
        """Text-to-image with classifier-free guidance; returns uint8 images [B, H, W, 3].

        scheduler: a name in jstyle.schedulers.SCHEDULERS, built from this model's scheduler_config.json.
        generator: draws the starting latents (unless `latents` is given) and the noise of stochastic steps
        (ddpm, euler_a, ddim with eta > 0); default np.random.default_rng(0). A list (one per prompt) makes
        each image depend only on its own generator, not on the rest of the batch.
        """
        if height % 8 or width % 8 or height <= 0 or width <= 0:
            raise InputError(f"height and width must be positive multiples of 8, got {height}x{width}")
        context, n = self.prompt_context(prompts, negative_prompt, guidance_scale)
        generator = np.random.default_rng(0) if generator is None else generator
        sched, step_kwargs = self.sampler(scheduler, num_inference_steps, eta, generator)
        f = self.vae_scale_factor
        shape = (n, self.unet.config.get("in_channels", 4), height // f, width // f)
        if latents is None:
            latents = batch_randn(shape, generator, self.dtype)
        latents = latents.cast(self.dtype) * sched.init_noise_sigma  # given latents: the model's dtype
        latents = self.denoise(latents, context, sched, guidance_scale=guidance_scale, step_kwargs=step_kwargs,
                               progress=progress)
        return self.decode_latents(latents)

    def encode_uint8(self, images: np.ndarray, generator: np.random.Generator | None = None,
                     noise: np.ndarray | jt.Var | None = None) -> jt.Var:
        """uint8 images [B, H, W, 3] (or one [H, W, 3]) -> scaled latents: a posterior sample (z = mean + std eps,
        eps = `noise`, else drawn from `generator`) or, with neither, the posterior mode."""
        images = uint8_batch(images)
        m = math.lcm(8, self.vae_scale_factor)
        if images.shape[1] % m or images.shape[2] % m:
            raise InputError(f"image size {images.shape[2]}x{images.shape[1]} must be a multiple of {m}; "
                             "resize or crop it")
        x = images.astype(np.float32).transpose(0, 3, 1, 2) / 127.5 - 1.0  # [0, 255] -> [-1, 1]
        return self.encode_images(jt.array(x), generator, noise)

    def encode_images(self, images: jt.Var, generator: np.random.Generator | None = None,
                      noise: np.ndarray | jt.Var | None = None) -> jt.Var:
        """Images in [-1, 1], [B, 3, H, W] -> scaled latents: a posterior sample (eps = `noise`, else drawn from
        `generator`), else the posterior mode."""
        with jt.no_grad():
            posterior: DiagonalGaussianDistribution = self.vae.encode(images.cast(self.vae_dtype))
            if noise is not None:
                eps = noise if isinstance(noise, jt.Var) else jt.array(np.asarray(noise, np.float32))
                if tuple(eps.shape) != tuple(posterior.mean.shape):
                    raise InputError(f"posterior noise has shape {tuple(eps.shape)}, "
                                     f"expected {tuple(posterior.mean.shape)}")
                z = posterior.mean + posterior.std * eps.cast(posterior.mean.dtype)  # mean + std * eps
            else:
                z = posterior.sample(generator) if generator is not None else posterior.mode()
        return as_dtype(z * self.vae.scaling_factor, self.dtype)  # in the VAE's dtype, handed on in the UNet's

    def vae_decode(self, latents: jt.Var) -> jt.Var:
        """Scaled latents (any dtype) -> the VAE's images [B, 3, H, W] in about [-1, 1], in the VAE's dtype.

        The latents are cast to the VAE's dtype, then unscaled, as diffusers' SDXL pipeline does for an upcast VAE.
        """
        with jt.no_grad():
            return self.vae.decode(as_dtype(latents, self.vae_dtype) / self.vae.scaling_factor)

    def decode_latents(self, latents: jt.Var) -> np.ndarray:
        """Scaled latents -> uint8 images [B, H, W, 3]."""
        x = np.clip(self.vae_decode(latents).float32().numpy() / 2 + 0.5, 0.0, 1.0)
        return (x.transpose(0, 2, 3, 1) * 255).round().astype(np.uint8)


def denoise(
    unet: Callable[..., jt.Var],
    latents: jt.Var,
    context: jt.Var | Callable[[int, float], jt.Var],
    scheduler: Any,
    timesteps: Sequence[float] | np.ndarray | None = None,
    guidance_scale: float = 1.0,
    step_kwargs: dict[str, Any] | None = None,
    callback: StepCallback | None = None,
    progress: bool = False,
) -> jt.Var:
    """The denoising loop: for each timestep t (default scheduler.timesteps), callback(i, t, latents), `unet` on
    scheduler.scale_model_input(latents, t), then latents = scheduler.step(output, t, latents, **step_kwargs).

    `context` (or `context(i, t)` per step) is [k B, 77, D] for B latents: the UNet sees k copies of the
    latents. With guidance_scale > 1, k = 2 ([negatives; prompts]) and the step gets e_u + w (e_c - e_u);
    otherwise it gets the UNet's output for all k B rows (k = 1, or a method's branches, as DiffStyle's).
    """
    timesteps = scheduler.timesteps if timesteps is None else timesteps
    step_kwargs = step_kwargs or {}
    cfg = guidance_scale > 1.0
    steps: Any = enumerate(timesteps)
    if progress:
        from tqdm import tqdm

        steps = tqdm(steps, total=len(timesteps), desc="denoising", leave=False)
    with jt.no_grad():
        for i, t in steps:
            t = t.item() if hasattr(t, "item") else t  # int, or float for Euler's linspace spacing
            if callback is not None:
                callback(i, t, latents)
            ctx = context if isinstance(context, jt.Var) else context(i, t)
            copies, rest = divmod(ctx.shape[0], latents.shape[0])
            if rest or copies < 1 or (cfg and copies != 2):
                raise InputError(f"context of batch {ctx.shape[0]} for {latents.shape[0]} latents; pass k rows per "
                                 "latent, k = 2 ([negatives; prompts]) with guidance_scale > 1")
            x = scheduler.scale_model_input(latents, t)
            out = unet(jt.concat([x] * copies) if copies > 1 else x, t, ctx)
            if cfg:
                uncond, cond = out.chunk(2)
                out = uncond + guidance_scale * (cond - uncond)  # CFG: e_u + w (e_c - e_u)
            latents = scheduler.step(out, t, latents, **step_kwargs).prev_sample
            latents.sync()  # run each step now: an honest progress bar and a graph of one step at a time
    return latents


def uint8_batch(images: np.ndarray) -> np.ndarray:
    """uint8 images [B, H, W, 3], or one [H, W, 3] given a batch axis; else a one-line InputError."""
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise InputError(f"images must be uint8 [B, H, W, 3] or [H, W, 3], got {images.dtype} {images.shape}")
    return images


def _component_class(path: Path, index: dict[str, Any], name: str) -> str:
    entry = index.get(name)
    if not (isinstance(entry, list) and len(entry) == 2 and entry[1]):
        raise ConfigError(f"{path / 'model_index.json'}: no '{name}' component; a Stable Diffusion folder needs one")
    if not (path / name).is_dir():
        raise WeightsError(f"{path}: component folder '{name}/' is missing; copy it from the original model")
    return entry[1]


def resolve_vae_dtype(dtype: str, vae_dtype: str | None, force_upcast: bool) -> str:
    """The VAE's dtype: `vae_dtype`; None: `dtype`; "auto": float32 under float16 when the VAE config's
    force_upcast is set (diffusers' SDXL pipelines: the fp16 VAE overflows into black/NaN images), else `dtype`."""
    if vae_dtype == "auto":
        return "float32" if dtype == "float16" and force_upcast else dtype
    return vae_dtype or dtype


def load_pipeline(
    path: str | Path, dtype: str = "float32", variant: str | None = None, vae_dtype: str | None = None
) -> StableDiffusion:
    """Load a diffusers Stable Diffusion folder (safetensors only, no network, no torch).

    vae_dtype: float32 / float16 / "auto" (`resolve_vae_dtype`) / None (`dtype`, as diffusers'
    StableDiffusionPipeline); a float32 VAE under a float16 UNet decodes float16 latents cast to float32.
    """
    path = Path(path)
    if not path.is_dir():
        raise WeightsError(f"{path}: model folder not found; pass a diffusers Stable Diffusion folder")
    if vae_dtype not in (None, "auto", "float32", "float16"):
        raise ConfigError(f"vae_dtype '{vae_dtype}' is not supported; use float32, float16 or auto")
    if dtype not in ("float32", "float16"):
        raise ConfigError(f"dtype '{dtype}' is not supported; use float32 or float16 (CUDA only)")
    if vae_dtype == "auto":
        vae_config = path / "vae" / "config.json"
        force_upcast = read_json(vae_config).get("force_upcast", True) if vae_config.is_file() else True
        vae_dtype = resolve_vae_dtype(dtype, vae_dtype, bool(force_upcast))
    vae_dtype = vae_dtype or dtype
    index = read_json(path / "model_index.json")
    models = {}
    for name, (accepted, cls) in _MODEL_CLASSES.items():
        class_name = _component_class(path, index, name)
        if class_name not in accepted:
            raise ConfigError(
                f"{path / 'model_index.json'}: {name} is a {class_name}; jstyle supports {', '.join(sorted(accepted))}"
            )
        models[name] = load_model(cls, path / name, dtype=vae_dtype if name == "vae" else dtype, variant=variant)
    tok_class = _component_class(path, index, "tokenizer")
    if tok_class not in _TOKENIZER_CLASSES:
        raise ConfigError(f"{path / 'model_index.json'}: tokenizer {tok_class} is not a CLIP tokenizer")
    _component_class(path, index, "scheduler")
    return StableDiffusion(
        tokenizer=CLIPTokenizer.from_pretrained(path / "tokenizer"),
        scheduler_config=read_json(path / "scheduler" / "scheduler_config.json"),
        path=path, dtype=dtype, vae_dtype=vae_dtype, **models,
    )
