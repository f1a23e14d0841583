"""What each task does (runs inside a worker): train a style's LoRA, generate content, inject the style.

`execute(task, ctx)` is the function the workers call. The stages are the same for every method; what
differs (LoRA or not, the prompt, the inject function and its settings) comes from the method's
jstyle.methods.registry entry. The base pipeline is loaded once per worker process and kept in ctx.cache;
LoRAs are switched per style (or one joint LoRA serves every style) without reloading it, and an inject
function may keep per-style work (a StyleID inversion, SDEdit's mean image) in the same cache for the style's
next prompt.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..data import list_images, list_styles
from ..io import read_rgb, save_png
from ..methods.registry import InjectJob
from .graph import Task
from .plan import JOINT, RunConfig, final_path, scheduler_name
from .runtime import WorkerContext

if TYPE_CHECKING:
    from ..training import LoRATrainConfig

__all__ = ["execute", "train_config", "base_dtype", "content_image", "styled_image", "OUTPUT_SIZE", "LOCAL_STAGES"]

OUTPUT_SIZE = 512  # the challenge's result size


def _pipeline(cfg: RunConfig, ctx: WorkerContext):
    """The worker's pipeline in cfg's dtype (loaded again only when a --method auto candidate asks another)."""
    from ..device import use_device

    device = use_device(ctx.device)
    # --dtype auto: float16 on CUDA, the VAE in float32 where its config asks (force_upcast: fp16 VAEs overflow)
    dtype = base_dtype(cfg.dtype, device)
    if ctx.cache.get("pipe_key") != (cfg.model, dtype):
        from ..pipeline import load_pipeline

        ctx.cache.pop("pipe", None)
        ctx.cache["pipe"] = load_pipeline(cfg.model, dtype=dtype, vae_dtype="auto")
        ctx.cache["pipe_key"], ctx.cache["lora"] = (cfg.model, dtype), None
        ctx.log.info("loaded %s on %s in %s", cfg.model, device, dtype)
    return ctx.cache["pipe"]


def base_dtype(dtype: str, device: str) -> str:
    """The base model's dtype for --dtype (auto: float16 on CUDA, float32 on CPU)."""
    if dtype != "auto":
        return dtype
    return "float16" if device == "cuda" else "float32"


def _use_lora(pipe, ctx: WorkerContext, lora: str | None, skip: tuple[str, ...] = ()) -> None:
    """Make the pipeline carry the LoRA file `lora` (relative to the out dir) without the `skip` targets (None: no
    LoRA at all), reusing what is already there."""
    from .. import lora as L

    if ctx.cache.get("lora") == (lora, skip if lora else ()):
        return
    if lora is None:
        L.unload_lora(pipe)
    else:
        L.apply_lora(pipe, ctx.out_dir / lora, skip=skip)
    ctx.cache["lora"] = (lora, skip if lora else ())


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
    from ..training import mixed_precision_for, preset, resume_checkpointing

    data = Path(cfg.data)
    folders = dict(style_dirs=tuple(str(data / s) for s in cfg.styles or list_styles(data))) if name == JOINT \
        else dict(style_dir=str(data / name))
    overrides = cfg.train_overrides()
    steps = overrides.get("max_train_steps", preset(cfg.preset).max_train_steps)
    return preset(cfg.preset, **overrides, **folders, output_dir=str(out_dir), progress=False,
                  mixed_precision=mixed_precision_for(base_dtype), **resume_checkpointing(steps))


def train(cfg: RunConfig, task: Task, ctx: WorkerContext, pipe) -> dict[str, Any]:
    """Train the task's LoRA (a style's, or the joint one), from its newest checkpoint when a killed run left one."""
    from ..training.trainer import LoRATrainer

    out = (ctx.out_dir / task.outputs[0]).parent
    own = cfg.method_entry.train_function()
    if own is not None:  # the method's own training (StyleBlend), writing the LoRA file last
        info = own(pipe, cfg, task.style, out)
        ctx.cache.pop("lora", None)  # what its training left in the pipeline: reloaded from the file when used
        return {"lora": task.outputs[0], **info}
    _, resumed = LoRATrainer.train_resuming(pipe, train_config(cfg, task.style, out, pipe.dtype), log=ctx.log)
    # training leaves this whole LoRA in the pipeline; with layers to skip at inference it is reloaded
    ctx.cache["lora"] = ("trained", task.outputs[0]) if cfg.lora_skip() else (task.outputs[0], ())
    return {"lora": task.outputs[0], "resumed_from_step": resumed}


def content_image(cfg: RunConfig, style: str, obj: str, ctx: WorkerContext, pipe) -> tuple[np.ndarray, str]:
    """Text-to-image of the method's prompt for `obj` (with the style's LoRA when the method trains one)."""
    _use_lora(pipe, ctx, cfg.lora_file(style) if cfg.method_entry.trains else None, cfg.lora_skip())
    prompt = cfg.prompt(style, obj)
    image = pipe.text_to_image(prompt, num_inference_steps=cfg.steps, guidance_scale=cfg.guidance,
                               height=cfg.size, width=cfg.size,
                               scheduler=scheduler_name(cfg.scheduler, pipe.scheduler_config),
                               generator=np.random.default_rng(cfg.noise_seed(style, obj)))[0]
    return image, prompt


def styled_image(cfg: RunConfig, style: str, obj: str, content: np.ndarray | None, ctx: WorkerContext,
                 pipe) -> tuple[np.ndarray, dict[str, Any]]:
    """The method's inject function on `content` (or none), with or without the style's LoRA."""
    method = cfg.method_entry
    _use_lora(pipe, ctx, cfg.lora_file(style) if method.inject_lora else None, cfg.lora_skip())
    job = InjectJob(settings=cfg.method_settings(), style=style, prompt=cfg.prompt(style, obj),
                    content=content, references=list_images(Path(cfg.data) / style),
                    reference_rule=cfg.reference, size=cfg.size, guidance=cfg.guidance,
                    seed=cfg.inference_seed(style), noise=cfg.noise_seed(style, obj), obj=obj, cache=ctx.cache,
                    scheduler=scheduler_name(cfg.scheduler, pipe.scheduler_config),
                    lora_dir=(ctx.out_dir / cfg.lora_file(style)).parent if method.trains else None,
                    reference_count=cfg.references, reference_size=cfg.reference_size)
    return method.inject_function()(pipe, job)


def generate(cfg: RunConfig, task: Task, ctx: WorkerContext, pipe) -> dict[str, Any]:
    image, prompt = content_image(cfg, task.style, task.prompt, ctx, pipe)
    final = task.outputs[0] == final_path(task.style, task.prompt)
    _save(image, ctx.out_dir / task.outputs[0], OUTPUT_SIZE if final else None)
    return {"prompt": prompt}


def _content(cfg: RunConfig, task: Task, ctx: WorkerContext) -> np.ndarray | None:
    """The task's content image, as its generate task wrote it (None for a method without one)."""
    return read_rgb(ctx.out_dir / cfg.content_file(task.style, task.prompt), cfg.size) \
        if cfg.method_entry.generates else None


def inject(cfg: RunConfig, task: Task, ctx: WorkerContext, pipe) -> dict[str, Any]:
    """The method's inject function on this task's content (or none), with or without the style's LoRA."""
    image, info = styled_image(cfg, task.style, task.prompt, _content(cfg, task, ctx), ctx, pipe)
    _save(image, ctx.out_dir / task.outputs[0], OUTPUT_SIZE)
    return info


def screen(cfg: RunConfig, task: Task, ctx: WorkerContext, pipe) -> dict[str, Any]:
    """--method auto: a candidate's image of a screening prompt (its inject step, or its content at 512)."""
    if cfg.method_entry.inject:
        return inject(cfg, task, ctx, pipe)
    _save(_content(cfg, task, ctx), ctx.out_dir / task.outputs[0], OUTPUT_SIZE)
    return {}


def final(run: RunConfig, task: Task, ctx: WorkerContext) -> dict[str, Any]:
    """--method auto: the style's winner's image of the prompt: its screening image, else made now."""
    from ..io import atomic_write
    from .auto import screen_path, winner_of

    cand, screened = winner_of(run, ctx.out_dir, task.style)
    out = ctx.out_dir / task.outputs[0]
    if task.prompt in screened:
        atomic_write(out, (ctx.out_dir / screen_path(cand.slug, task.style, task.prompt)).read_bytes())
        return {"winner": cand.spec, "from": "screening"}
    cfg = cand.cfg
    pipe = _pipeline(cfg, ctx)
    content = content_image(cfg, task.style, task.prompt, ctx, pipe)[0] if cfg.method_entry.generates else None
    image = styled_image(cfg, task.style, task.prompt, content, ctx, pipe)[0] if cfg.method_entry.inject else content
    _save(image, out, OUTPUT_SIZE)
    return {"winner": cand.spec, "from": "made"}


STAGES = {"train": train, "generate": generate, "inject": inject, "screen": screen}
LOCAL_STAGES = ("select",)  # run in the run's own process, beside the checker's scorer (jstyle.jobs.workers)


def execute(task: Task, ctx: WorkerContext) -> dict[str, Any]:
    """Run one task of the plan in this worker (the workers' entry point)."""
    run = RunConfig.from_dict(ctx.config)
    if task.stage in ("select", "final"):
        from .auto import select

        return (select if task.stage == "select" else final)(run, task, ctx)
    cfg = run
    if task.candidate is not None:
        from .auto import parse_candidate

        cfg = parse_candidate(task.candidate, run).cfg
    return STAGES[task.stage](cfg, task, ctx, _pipeline(cfg, ctx))
