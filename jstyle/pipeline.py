"""A loaded Stable Diffusion folder: tokenizer, text encoder, UNet, VAE and the scheduler config."""

from __future__ import annotations

from collections.abc import Sequence
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
from .schedulers.common import batch_randn
from .tokenizer import CLIPTokenizer

__all__ = ["StableDiffusion", "load_pipeline", "resolve_vae_dtype"]

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

    def encode_prompt(self, prompts: str | list[str]) -> jt.Var:
        """Text-encoder hidden states [B, 77, D] for prompts padded to the tokenizer's max length."""
        ids = self.tokenizer(prompts, padding="max_length", truncation=True)["input_ids"]
        with jt.no_grad():
            return self.text_encoder(jt.array(np.asarray(ids, dtype=np.int64))).last_hidden_state

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
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompts:
            raise InputError("no prompts given")
        if height % 8 or width % 8 or height <= 0 or width <= 0:
            raise InputError(f"height and width must be positive multiples of 8, got {height}x{width}")
        if guidance_scale < 0:
            raise InputError(f"guidance_scale must be >= 0, got {guidance_scale}")
        n_train = int(self.scheduler_config.get("num_train_timesteps", 1000))
        if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, (int, np.integer)) \
                or not 1 <= num_inference_steps <= n_train:
            raise InputError(f"num_inference_steps must be an integer in 1..{n_train}, got {num_inference_steps!r}")
        negatives = [negative_prompt] * len(prompts) if isinstance(negative_prompt, str) else list(negative_prompt)
        if len(negatives) != len(prompts):
            raise InputError(f"{len(negatives)} negative prompts for {len(prompts)} prompts; "
                             "give one per prompt or a single string")
        if eta and scheduler != "ddim":
            raise InputError(f"eta is a DDIM setting; scheduler '{scheduler}' does not take it")
        name, scheduler = scheduler, get_scheduler(scheduler, self.scheduler_config)
        scheduler.set_timesteps(num_inference_steps)
        generator = np.random.default_rng(0) if generator is None else generator
        step_kwargs = {"generator": generator, **({"eta": eta} if name == "ddim" else {})}
        cfg = guidance_scale > 1.0
        context = self.encode_prompt(negatives + prompts if cfg else prompts)
        f = self.vae_scale_factor
        shape = (len(prompts), self.unet.config.get("in_channels", 4), height // f, width // f)
        if latents is None:
            latents = batch_randn(shape, generator, self.dtype)
        latents = latents.cast(self.dtype) * scheduler.init_noise_sigma  # given latents: the model's dtype
        steps = scheduler.timesteps
        if progress:
            from tqdm import tqdm

            steps = tqdm(steps, desc="denoising", leave=False)
        with jt.no_grad():
            for t in steps:
                x = scheduler.scale_model_input(latents, t)
                x = jt.concat([x, x]) if cfg else x
                out = self.unet(x, t.item(), context)  # t: int, or float for Euler's linspace spacing
                if cfg:
                    uncond, cond = out.chunk(2)
                    out = uncond + guidance_scale * (cond - uncond)  # CFG: e_u + w (e_c - e_u)
                latents = scheduler.step(out, t, latents, **step_kwargs).prev_sample
                latents.sync()  # run each step now: an honest progress bar and a graph of one step at a time
        return self.decode_latents(latents)

    def encode_images(self, images: jt.Var, generator: np.random.Generator | None = None) -> jt.Var:
        """Images in [-1, 1], [B, 3, H, W] -> scaled latents (a posterior sample with a generator, else its mode)."""
        with jt.no_grad():
            posterior: DiagonalGaussianDistribution = self.vae.encode(images.cast(self.vae_dtype))
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
