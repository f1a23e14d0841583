"""What each task does (runs inside a worker): train a style's LoRA, generate content, inject the style.

`execute(task, ctx)` is the function the workers call. The stages are the same for every method; what
differs (LoRA or not, the prompt, the inject function and its settings) comes from the method's
jstyle.methods.registry entry. The base pipeline is loaded once per worker process and kept in ctx.cache;
LoRAs are switched per style (or one joint LoRA serves every style) without reloading it, and an inject
function may keep per-style work (a StyleID inversion, SDEdit's mean image) in the same cache for the style's
next prompt.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..data import list_images, list_styles
from ..io import read_rgb, save_png
from ..methods.registry import InjectJob
from .graph import Task
from .plan import JOINT, RunConfig, content_path, final_path, lora_path, scheduler_name
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


def _use_lora(pipe, ctx: WorkerContext, name: str | None, skip: tuple[str, ...] = ()) -> None:
    """Make the pipeline carry LoRA `name` (a style's, or the joint one) without the `skip` targets (None: no LoRA
    at all), reusing what is already there."""
    from .. import lora as L

    if ctx.cache.get("lora") == name:
        return
    if name is None:
        L.unload_lora(pipe)
    else:
        L.apply_lora(pipe, ctx.out_dir / lora_path(name), skip=skip)
    ctx.cache["lora"] = name


def _save(image: np.ndarray, path: Path, size: int | None = None) -> None:
    """Write a PNG (atomically), resized to size x size first (bicubic) when given and different."""
    from PIL import Image

    if size is not None and image.shape[:2] != (size, size):
        image = np.asarray(Image.fromarray(image).resize((size, size), Image.BICUBIC))
    save_png(image, path)


def train_config(cfg: RunConfig, name: str, out_dir: Path, base_dtype: str) -> LoRATrainConfig:
    """The LoRA training settings of one train task (`name`: a style, or JOINT for every style of the run):
    preset < the run's train_settings < its flags.

    Precision follows the base: float32 LoRA tensors always; a float16 base (CUDA, --dtype auto) trains in fp16
    mixed precision with a dynamic loss scale, a float32 base (--dtype float32: the JDiffusion baseline) in float32.
    Never float16 training at a loss scale of 1. A checkpoint every tenth of the steps (only the newest kept) lets
    a killed run resume its training."""
    from ..training import mixed_precision_for, preset

    data = Path(cfg.data)
    folders = dict(style_dirs=tuple(str(data / s) for s in cfg.styles or list_styles(data))) if name == JOINT \
        else dict(style_dir=str(data / name))
    overrides = cfg.train_overrides()
    steps = overrides.get("max_train_steps", preset(cfg.preset).max_train_steps)
    return preset(cfg.preset, **overrides, **folders, output_dir=str(out_dir), progress=False,
                  mixed_precision=mixed_precision_for(base_dtype), checkpointing_steps=max(1, steps // 10),
                  checkpoints_total_limit=1)


def train(cfg: RunConfig, task: Task, ctx: WorkerContext, pipe) -> dict[str, Any]:
    """Train the task's LoRA (a style's, or the joint one), from its newest checkpoint when a killed run left one."""
    from ..train_lora import train_lora
    from ..training.trainer import CHECKPOINT_DIR, resumable_checkpoint

    out = (ctx.out_dir / lora_path(task.style)).parent
    tcfg = train_config(cfg, task.style, out, pipe.dtype)
    resume = resumable_checkpoint(tcfg)
    if resume is None:  # checkpoints of other settings cannot be resumed
        shutil.rmtree(out / CHECKPOINT_DIR, ignore_errors=True)
    else:
        tcfg = dataclasses.replace(tcfg, resume=str(resume))
        ctx.log.info("resuming %s from %s", task.key, resume)
    train_lora(tcfg, pipe=pipe)
    shutil.rmtree(out / CHECKPOINT_DIR, ignore_errors=True)  # the final LoRA is written: nothing left to resume
    # training leaves this whole LoRA in the pipeline; with layers to skip at inference it is reloaded
    ctx.cache["lora"] = ("trained", task.style) if cfg.lora_skip() else task.style
    return {"lora": lora_path(task.style), "resumed_from_step": int(resume.name[5:]) if resume else 0}


def generate(cfg: RunConfig, task: Task, ctx: WorkerContext, pipe) -> dict[str, Any]:
    method = cfg.method_entry
    _use_lora(pipe, ctx, cfg.lora_name(task.style) if method.trains else None, cfg.lora_skip())
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
    _use_lora(pipe, ctx, cfg.lora_name(task.style) if method.inject_lora else None, cfg.lora_skip())
    job = InjectJob(settings=cfg.method_settings(), style=task.style, prompt=cfg.prompt(task.style, task.prompt),
                    content=content, references=list_images(Path(cfg.data) / task.style),
                    reference_rule=cfg.reference, size=cfg.size, guidance=cfg.guidance,
                    seed=cfg.inference_seed(task.style), obj=task.prompt, cache=ctx.cache,
                    scheduler=scheduler_name(cfg.scheduler, pipe.scheduler_config))
    image, info = method.inject_function()(pipe, job)
    _save(image, ctx.out_dir / task.outputs[0], OUTPUT_SIZE)
    return info


STAGES = {"train": train, "generate": generate, "inject": inject}


def execute(task: Task, ctx: WorkerContext) -> dict[str, Any]:
    """Run one task of the plan in this worker (the workers' entry point)."""
    cfg = RunConfig.from_dict(ctx.config)
    return STAGES[task.stage](cfg, task, ctx, _pipeline(cfg, ctx))
