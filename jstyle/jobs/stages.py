"""What each task does (runs inside a worker): train a style's LoRA, generate content, inject the style.

`execute(task, ctx)` is the function the workers call. The stages are the same for every method; what
differs (LoRA or not, the prompt, the inject function and its settings) comes from the method's
jstyle.methods.registry entry. The base pipeline is loaded once per worker process and kept in ctx.cache;
LoRAs are switched per style without reloading it, and an inject function may keep per-style work (a
StyleID inversion, SDEdit's mean image) in the same cache for the style's next prompt.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..data import list_images
from ..io import read_rgb, save_png
from ..methods.registry import InjectJob
from .graph import Task
from .plan import RunConfig, content_path, final_path, lora_path, scheduler_name
from .runtime import WorkerContext

if TYPE_CHECKING:
    from ..training import LoRATrainConfig

__all__ = ["execute", "train_config", "base_dtype", "OUTPUT_SIZE"]

OUTPUT_SIZE = 512  # the challenge's result size


def _pipeline(cfg: RunConfig, ctx: WorkerContext):
    if "pipe" not in ctx.cache:
        from ..device import use_device
        from ..pipeline import load_pipeline

        device = use_device(ctx.device)
        # --dtype auto: float16 on CUDA, the VAE in float32 where its config asks (force_upcast: fp16 VAEs overflow)
        dtype = base_dtype(cfg.dtype, device)
        ctx.cache["pipe"] = load_pipeline(cfg.model, dtype=dtype, vae_dtype="auto")
        ctx.log.info("loaded %s on %s in %s", cfg.model, device, dtype)
    return ctx.cache["pipe"]


def base_dtype(dtype: str, device: str) -> str:
    """The base model's dtype for --dtype (auto: float16 on CUDA, float32 on CPU)."""
    if dtype != "auto":
        return dtype
    return "float16" if device == "cuda" else "float32"


def _use_lora(pipe, ctx: WorkerContext, style: str | None, skip: tuple[str, ...] = ()) -> None:
    """Make the pipeline carry `style`'s LoRA without the `skip` targets (None: no LoRA at all), reusing what is
    already there."""
    from .. import lora as L

    if ctx.cache.get("lora") == style:
        return
    if style is None:
        L.unload_lora(pipe)
    else:
        L.apply_lora(pipe, ctx.out_dir / lora_path(style), skip=skip)
    ctx.cache["lora"] = style


def _save(image: np.ndarray, path: Path, size: int | None = None) -> None:
    """Write a PNG (atomically), resized to size x size first (bicubic) when given and different."""
    from PIL import Image

    if size is not None and image.shape[:2] != (size, size):
        image = np.asarray(Image.fromarray(image).resize((size, size), Image.BICUBIC))
    save_png(image, path)


def train_config(cfg: RunConfig, style: str, out_dir: Path, base_dtype: str) -> LoRATrainConfig:
    """The LoRA training settings of one style's task: preset < the run's train_settings < its flags.

    Precision follows the base: float32 LoRA tensors always; a float16 base (CUDA, --dtype auto) trains in fp16
    mixed precision with a dynamic loss scale, a float32 base (--dtype float32: the JDiffusion baseline) in float32.
    Never float16 training at a loss scale of 1."""
    from ..training import mixed_precision_for, preset

    return preset(cfg.preset, **cfg.train_overrides(), style_dir=str(Path(cfg.data) / style), output_dir=str(out_dir),
                  progress=False, mixed_precision=mixed_precision_for(base_dtype))


def train(cfg: RunConfig, task: Task, ctx: WorkerContext, pipe) -> dict[str, Any]:
    from ..train_lora import train_lora

    out = (ctx.out_dir / lora_path(task.style)).parent
    train_lora(train_config(cfg, task.style, out, pipe.dtype), pipe=pipe)
    # training leaves this style's whole LoRA in the pipeline; with layers to skip at inference it is reloaded
    ctx.cache["lora"] = ("trained", task.style) if cfg.lora_skip() else task.style
    return {"lora": lora_path(task.style)}


def generate(cfg: RunConfig, task: Task, ctx: WorkerContext, pipe) -> dict[str, Any]:
    method = cfg.method_entry
    _use_lora(pipe, ctx, task.style if method.trains else None, cfg.lora_skip())
    prompt = cfg.prompt(task.style, task.prompt)
    image = pipe.text_to_image(prompt, num_inference_steps=cfg.steps, guidance_scale=cfg.guidance,
                               height=cfg.size, width=cfg.size,
                               scheduler=scheduler_name(cfg.scheduler, pipe.scheduler_config),
                               generator=np.random.default_rng(cfg.inference_seed(task.style)))[0]
    final = task.outputs[0] == final_path(task.style, task.prompt)
    _save(image, ctx.out_dir / task.outputs[0], OUTPUT_SIZE if final else None)
    return {"prompt": prompt}


def inject(cfg: RunConfig, task: Task, ctx: WorkerContext, pipe) -> dict[str, Any]:
    """The method's inject function on this task's content (or none), with or without the style's LoRA."""
    method = cfg.method_entry
    content = read_rgb(ctx.out_dir / content_path(task.style, task.prompt), cfg.size) if method.generates else None
    _use_lora(pipe, ctx, task.style if method.inject_lora else None, cfg.lora_skip())
    job = InjectJob(settings=cfg.method_settings(), style=task.style, prompt=cfg.prompt(task.style, task.prompt),
                    content=content, references=list_images(Path(cfg.data) / task.style),
                    reference_rule=cfg.reference, size=cfg.size, guidance=cfg.guidance,
                    seed=cfg.inference_seed(task.style), obj=task.prompt, cache=ctx.cache,
                    scheduler=scheduler_name(cfg.scheduler, pipe.scheduler_config),
                    reference_count=cfg.references, reference_size=cfg.reference_size)
    image, info = method.inject_function()(pipe, job)
    _save(image, ctx.out_dir / task.outputs[0], OUTPUT_SIZE)
    return info


STAGES = {"train": train, "generate": generate, "inject": inject}


def execute(task: Task, ctx: WorkerContext) -> dict[str, Any]:
    """Run one task of the plan in this worker (the workers' entry point)."""
    cfg = RunConfig.from_dict(ctx.config)
    return STAGES[task.stage](cfg, task, ctx, _pipeline(cfg, ctx))
