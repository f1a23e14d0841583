"""SDEdit / img2img (Meng et al. 2022): noise an init image to an intermediate timestep, then denoise it.

Strength follows diffusers' StableDiffusionImg2ImgPipeline exactly:

    init_timestep = min(int(N * strength), N); t_start = N - init_timestep
    timesteps = scheduler.timesteps[t_start:]                    (all jstyle schedulers have order 1)
    z0 = scaling_factor * posterior sample of vae.encode(image)  (diffusers' retrieve_latents default)
    z = scheduler.add_noise(z0, noise, timesteps[0])             (= sqrt(a) z0 + sqrt(1 - a) noise for DDIM)

then the remaining `init_timestep` steps are denoised with classifier-free guidance (and any LoRA applied
to the pipeline). `mean_image` builds the init of the best public challenge recipe: the pixel mean of a
style's reference images.

CLI: python -m jstyle.methods.sdedit --model DIR (--init IMG | --style-dir DIR) --prompt TEXT ... --out DIR
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..cli import run_cli
from ..errors import ConfigError, InputError
from ..io import read_rgb

__all__ = ["mean_image", "strength_timesteps", "img2img", "build_parser", "main"]

POSTERIOR = ("sample", "mode")


MEAN_RESAMPLES = ("fit", "bicubic")  # fit: read_rgb's filter for the fit (Lanczos crop, bilinear squash)
MEAN_ROUNDINGS = ("round", "floor")


def mean_image(paths: Sequence[str | Path], size: int = 512, fit: str = "crop", resample: str = "fit",
               rounding: str = "round") -> np.ndarray:
    """Pixel mean of images, each read by `jstyle.io.read_rgb` at `size`: uint8 [size, size, 3].

    fit: read_rgb's ("crop": centre square crop, Lanczos; "squash": the whole image to a square, bilinear).
    resample="bicubic" (fit="squash" only): the whole image resized with PIL's bicubic filter, PIL's default for
    RGB `Image.resize` (JDiffArtFlow's get_avg_image). rounding: "round" to nearest, or "floor" as numpy's
    `mean(...).astype(np.uint8)` truncates. Alpha is composited on white in every case (read_rgb)."""
    from PIL import Image

    if fit not in ("crop", "squash"):
        raise ConfigError(f"mean image fit '{fit}': use crop or squash")
    if resample not in MEAN_RESAMPLES or (resample == "bicubic" and fit != "squash"):
        raise ConfigError(f"mean image resample '{resample}': use fit, or bicubic with fit squash")
    if rounding not in MEAN_ROUNDINGS:
        raise ConfigError(f"mean image rounding '{rounding}': use one of {', '.join(MEAN_ROUNDINGS)}")
    paths = list(paths)
    if not paths:
        raise InputError("mean_image: no reference images given")
    total = np.zeros((size, size, 3), np.float64)
    for p in paths:
        if resample == "bicubic":
            total += np.asarray(Image.fromarray(read_rgb(p)).resize((size, size), Image.BICUBIC), np.float64)
        else:
            total += read_rgb(p, size, fit=fit)
    mean = total / len(paths)  # mean = sum / n, then to uint8 rounded or truncated
    return np.clip(np.round(mean) if rounding == "round" else np.floor(mean), 0, 255).astype(np.uint8)


def strength_timesteps(timesteps: np.ndarray, strength: float) -> tuple[np.ndarray, int]:
    """(timesteps to run, t_start) as diffusers' img2img get_timesteps: N - min(int(N*s), N) steps skipped."""
    if not 0.0 < strength <= 1.0:
        raise InputError(f"strength must be in (0, 1], got {strength}")
    n = len(timesteps)
    init_timestep = min(int(n * strength), n)
    t_start = max(n - init_timestep, 0)
    run = np.asarray(timesteps)[t_start:]
    if len(run) == 0:
        raise InputError(f"strength {strength} with {n} steps runs no denoising step; raise --strength or --steps")
    return run, t_start


def _as_uint8(images: Any) -> np.ndarray:
    """uint8 [B, H, W, 3] / [H, W, 3] array or a list of PIL images / arrays -> uint8 [B, H, W, 3]."""
    from ..pipeline import uint8_batch

    if isinstance(images, (list, tuple)):
        images = np.stack([np.asarray(im.convert("RGB") if hasattr(im, "convert") else im) for im in images])
    return uint8_batch(images)


def img2img(
    pipe,
    images: Any,
    prompts: str | list[str],
    strength: float = 0.8,
    num_inference_steps: int = 40,
    guidance_scale: float = 7.5,
    negative_prompt: str | list[str] = "",
    scheduler: str = "ddim",
    generator: np.random.Generator | None = None,
    noise: np.ndarray | None = None,
    posterior: str = "sample",
    posterior_noise: np.ndarray | None = None,
    eta: float = 0.0,
    progress: bool = False,
    ip_adapter_image: np.ndarray | None = None,
) -> np.ndarray:
    """SDEdit: uint8 images [B, H, W, 3] edited towards `prompts`; returns uint8 [B, H, W, 3].

    One init image serves all prompts (it is repeated), or pass one per prompt. `generator` (default
    np.random.default_rng(0)) draws, in diffusers' order, the posterior sample of the VAE encoding (when
    posterior='sample'), the add_noise noise, then the noise of stochastic steps; `posterior_noise` and
    `noise` ([B, 4, h, w] float arrays) replace the first two draws. posterior='mode' uses the posterior mean.
    `ip_adapter_image` (uint8 [H, W, 3], or one per prompt) is the image prompt of the IP-Adapter loaded with
    jstyle.methods.ip_adapter.load_ip_adapter, for this call only.
    """
    import jittor as jt

    from ..ops import randn

    if posterior not in POSTERIOR:
        raise InputError(f"unknown posterior '{posterior}'; use one of {', '.join(POSTERIOR)}")
    context, n = pipe.prompt_context(prompts, negative_prompt, guidance_scale)
    generator = np.random.default_rng(0) if generator is None else generator
    sched, step_kwargs = pipe.sampler(scheduler, num_inference_steps, eta, generator)
    timesteps, t_start = strength_timesteps(np.asarray(sched.timesteps), strength)  # numpy in every scheduler
    if hasattr(sched, "set_begin_index"):
        sched.set_begin_index(t_start)
    image_prompt: AbstractContextManager = nullcontext()
    if ip_adapter_image is not None:
        from .ip_adapter import ip_adapter_image_prompt

        image_prompt = ip_adapter_image_prompt(pipe, np.asarray(ip_adapter_image))  # InputError if none is loaded
    pixels = _as_uint8(images)
    if len(pixels) == 1 and n > 1:
        pixels = np.repeat(pixels, n, axis=0)
    if len(pixels) != n:
        raise InputError(f"{len(pixels)} init images for {n} prompts; pass one, or one per prompt")
    if posterior == "sample":  # z0 = mean + std * eps, eps drawn first from the generator (diffusers' order)
        z0 = pipe.encode_uint8(pixels, generator, posterior_noise)
    else:
        z0 = pipe.encode_uint8(pixels)
    shape = tuple(z0.shape)
    if noise is None:
        noise_var = randn(shape, generator, str(z0.dtype))
    else:
        noise = np.asarray(noise, np.float32)
        if noise.shape != shape:
            raise InputError(f"noise has shape {noise.shape}, expected {shape}")
        noise_var = jt.array(noise).cast(z0.dtype)
    latents = sched.add_noise(z0, noise_var, np.array([timesteps[0]] * shape[0]))  # sqrt(a_t) z0 + sqrt(1-a_t) n
    with image_prompt:
        latents = pipe.denoise(latents, context, sched, timesteps, guidance_scale, step_kwargs, progress=progress)
    return pipe.decode_latents(latents)


# ----------------------------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    from ..device import DEVICES
    from ..schedulers import SCHEDULERS

    p = argparse.ArgumentParser(
        prog="python -m jstyle.methods.sdedit",
        description="SDEdit / img2img: noise an init image (or the pixel mean of a style's reference images) "
                    "to strength x the schedule, then denoise it towards each prompt (CFG, optional LoRA).",
    )
    p.add_argument("--model", type=Path, required=True, help="diffusers Stable Diffusion folder")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--init", type=Path, help="init image file")
    src.add_argument("--style-dir", type=Path,
                     help="style folder (images/ inside, or the images themselves): init = their pixel mean")
    p.add_argument("--prompt", nargs="+", required=True, help="one or more prompts")
    p.add_argument("--negative-prompt", default="")
    p.add_argument("--strength", type=float, default=0.8, help="fraction of the schedule to run, in (0, 1]")
    p.add_argument("--steps", type=int, default=40, help="inference steps of the full schedule")
    p.add_argument("--guidance", type=float, default=7.5, help="classifier-free guidance scale")
    p.add_argument("--scheduler", default="ddim", choices=list(SCHEDULERS))
    p.add_argument("--posterior", default="sample", choices=list(POSTERIOR),
                   help="VAE latent of the init: a posterior sample (diffusers' default) or its mode")
    p.add_argument("--lora", type=Path, help="LoRA .safetensors file (diffusers/PEFT/kohya layout)")
    p.add_argument("--lora-scale", type=float, default=1.0)
    p.add_argument("--ip-adapter", type=Path, help="IP-Adapter .safetensors (public ip-adapter_sd15 layout)")
    p.add_argument("--image-encoder", type=Path, help="its CLIPVisionModelWithProjection folder")
    p.add_argument("--ip-image", type=Path, help="image prompt (default: the first style image, or --init)")
    p.add_argument("--ip-scale", type=float, default=0.6, help="weight of the image prompt")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=512, help="init image side (centre square crop, then a Lanczos resize)")
    p.add_argument("--device", default="auto", choices=list(DEVICES))
    p.add_argument("--out", type=Path, required=True, help="output folder")
    return p


def check_args(args: argparse.Namespace) -> None:
    """One-line errors for unusable settings, before the model is loaded."""
    if not 0.0 < args.strength <= 1.0:
        raise InputError(f"--strength must be in (0, 1], got {args.strength}")
    if args.steps < 1:
        raise InputError(f"--steps must be >= 1, got {args.steps}")
    if args.size <= 0 or args.size % 8:
        raise InputError(f"--size must be a positive multiple of 8, got {args.size}")
    if args.guidance < 0:
        raise InputError(f"--guidance must be >= 0, got {args.guidance}")
    strength_timesteps(np.arange(args.steps), args.strength)
    if args.init is not None and not args.init.is_file():
        raise InputError(f"--init {args.init}: image not found")
    if args.style_dir is not None and not args.style_dir.is_dir():
        raise InputError(f"--style-dir {args.style_dir}: folder not found")
    if not args.model.is_dir():
        raise InputError(f"--model {args.model}: folder not found")
    if args.lora is not None and not args.lora.is_file():
        raise InputError(f"--lora {args.lora}: file not found")
    if args.ip_adapter is not None and (args.image_encoder is None or not args.image_encoder.is_dir()):
        raise InputError("--ip-adapter needs --image-encoder DIR (a CLIPVisionModelWithProjection folder)")
    for flag in ("ip_adapter", "ip_image"):
        if getattr(args, flag) is not None and not getattr(args, flag).is_file():
            raise InputError(f"--{flag.replace('_', '-')} {getattr(args, flag)}: file not found")


def _style_images(folder: Path) -> list[Path]:
    """--style-dir's images: <dir>/images/* if that folder exists, else <dir>/* (sorted, dot files skipped)."""
    from ..data import IMAGE_SUFFIXES

    images = folder / "images" if (folder / "images").is_dir() else folder
    paths = sorted(p for p in images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
    if not paths:
        raise InputError(f"{images}: no images ({', '.join(IMAGE_SUFFIXES)}) inside")
    return paths


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..device import use_device
    from ..generate import output_name
    from ..io import save_png
    from ..pipeline import load_pipeline

    check_args(args)
    init = read_rgb(args.init, args.size) if args.init is not None else \
        mean_image(_style_images(args.style_dir), args.size)
    prompts = list(dict.fromkeys(args.prompt))
    todo = [p for p in prompts if not (args.out / output_name(p, args.seed)).exists()]
    if not todo:
        print(f"all {len(prompts)} images already in {args.out}; nothing to do")
        return 0
    use_device(args.device)
    pipe = load_pipeline(args.model)
    if args.lora is not None:
        from ..lora import apply_lora

        apply_lora(pipe, args.lora, scale=args.lora_scale)
    if args.ip_adapter is not None:
        from .ip_adapter import load_ip_adapter, set_ip_adapter_image

        load_ip_adapter(pipe, args.ip_adapter, args.image_encoder, scale=args.ip_scale)
        source = args.ip_image or args.init or _style_images(args.style_dir)[0]
        set_ip_adapter_image(pipe, read_rgb(source))
    args.out.mkdir(parents=True, exist_ok=True)
    for prompt in tqdm(todo, desc="sdedit", unit="img"):
        image = img2img(pipe, init, [prompt], strength=args.strength, num_inference_steps=args.steps,
                        guidance_scale=args.guidance, negative_prompt=args.negative_prompt,
                        scheduler=args.scheduler, generator=np.random.default_rng(args.seed),
                        posterior=args.posterior, progress=True)[0]
        save_png(image, args.out / output_name(prompt, args.seed))
    print(f"wrote {len(todo)} image{'s' * (len(todo) != 1)} to {args.out} ({len(prompts) - len(todo)} already there)")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (2 with a one-line `error: ...` for a user-fixable problem)."""
    return run_cli(build_parser(), run, argv)


# ------------------------------------------------------------------------------------- run_all's inject stage


@dataclass(frozen=True)
class SDEditConfig:
    """SDEdit settings of run_all's sdedit method (img2img from the pixel mean of a style's references)."""

    strength: float = field(default=0.9, metadata={"help": "SDEdit strength: the fraction of the schedule run, "
                                                           "in (0, 1]"})
    steps: int = field(default=40, metadata={"help": "SDEdit steps of the full schedule"})
    mean_fit: str = field(default="crop", metadata={"help": "how each reference reaches the mean image's size: "
                                                              "crop (centre square) or squash (whole image)"})
    mean_resample: str = field(default="fit", metadata={"help": "mean image filter: fit (the fit's own: Lanczos "
                                                                  "crop, bilinear squash) or bicubic (squash only)"})
    mean_rounding: str = field(default="round", metadata={"help": "mean image to uint8: round or floor"})

    def __post_init__(self):
        if not 0.0 < self.strength <= 1.0:
            raise ConfigError(f"SDEdit strength must be in (0, 1], got {self.strength}")
        if self.steps < 1:
            raise ConfigError(f"SDEdit steps must be >= 1, got {self.steps}")
        bicubic_crop = self.mean_resample == "bicubic" and self.mean_fit != "squash"
        if self.mean_fit not in ("crop", "squash") or self.mean_rounding not in MEAN_ROUNDINGS or \
                self.mean_resample not in MEAN_RESAMPLES or bicubic_crop:
            raise ConfigError(f"SDEdit mean image: fit {self.mean_fit!r} (crop|squash), resample "
                              f"{self.mean_resample!r} (fit|bicubic with squash), rounding {self.mean_rounding!r} "
                              "(round|floor)")


def inject(pipe, job) -> tuple[np.ndarray, dict]:
    """run_all's inject stage (a jstyle.methods.registry.InjectJob): img2img of the prompt from the pixel mean
    of the style's references (kept in job.cache), with whatever LoRA the pipeline carries."""
    st = job.settings
    key = ("mean", job.style, job.size, st.mean_fit, st.mean_resample, st.mean_rounding)
    if key not in job.cache:
        job.cache[key] = mean_image(job.references, job.size, st.mean_fit, st.mean_resample, st.mean_rounding)
    image = img2img(pipe, job.cache[key], [job.prompt], strength=st.strength,
                    num_inference_steps=st.steps, guidance_scale=job.guidance, scheduler=job.scheduler,
                    generator=np.random.default_rng(job.noise))[0]
    return image, {"prompt": job.prompt, "init": "mean of references"}


if __name__ == "__main__":
    raise SystemExit(main())
