"""What each task does (runs inside a worker): train a style's LoRA, generate content, inject the style.

`execute(task, ctx)` is the function the workers call. The base pipeline is loaded once per worker
process and kept in ctx.cache; LoRAs are switched per style without reloading it, and a StyleID
style inversion is computed once per reference image and reused for every prompt of that style.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..data import list_images
from ..errors import ConfigError
from .graph import Task
from .plan import RunConfig, content_path, final_path, lora_path
from .workers import WorkerContext

if TYPE_CHECKING:
    from ..training import LoRATrainConfig

__all__ = ["execute", "train_config", "OUTPUT_SIZE"]

OUTPUT_SIZE = 512  # the challenge's result size


def _pipeline(cfg: RunConfig, ctx: WorkerContext):
    if "pipe" not in ctx.cache:
        from ..device import use_device
        from ..pipeline import load_pipeline

        device = use_device(ctx.device)
        # float16 on CUDA, the VAE in float32 where its config asks (force_upcast: fp16 VAEs overflow)
        dtype = "float16" if device == "cuda" else "float32"
        ctx.cache["pipe"] = load_pipeline(cfg.model, dtype=dtype, vae_dtype="auto")
        ctx.log.info("loaded %s on %s", cfg.model, device)
    return ctx.cache["pipe"]


def _use_lora(pipe, ctx: WorkerContext, style: str | None) -> None:
    """Make the pipeline carry `style`'s LoRA (None: no LoRA at all), reusing what is already there."""
    from .. import lora as L

    if ctx.cache.get("lora") == style:
        return
    if style is None:
        for comp in L.COMPONENTS:
            model = getattr(pipe, comp, None)
            if model is not None:
                L.remove_lora(model)
    else:
        L.apply_lora(pipe, ctx.out_dir / lora_path(style))
    ctx.cache["lora"] = style


def _save(image: np.ndarray, path: Path, size: int | None = None) -> None:
    from PIL import Image

    from ..images import save_png

    if size is not None and image.shape[:2] != (size, size):
        image = np.asarray(Image.fromarray(image).resize((size, size), Image.BICUBIC))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_png(image, path)


def train_config(cfg: RunConfig, style: str, out_dir: Path, base_dtype: str) -> LoRATrainConfig:
    """The LoRA recipe of one style's training task; a float16 base (CUDA) trains in fp16 mixed precision."""
    from ..training import mixed_precision_for, preset

    overrides: dict[str, Any] = dict(style_dir=str(Path(cfg.data) / style), output_dir=str(out_dir),
                                     resolution=cfg.train_size or cfg.size, seed=cfg.seed, progress=False,
                                     gradient_checkpointing=cfg.gradient_checkpointing,
                                     mixed_precision=mixed_precision_for(base_dtype))
    if cfg.train_steps is not None:
        overrides["max_train_steps"] = cfg.train_steps
    return preset(cfg.preset, **overrides)


def train(cfg: RunConfig, task: Task, ctx: WorkerContext, pipe) -> dict[str, Any]:
    from ..train_lora import train_lora

    out = (ctx.out_dir / lora_path(task.style)).parent
    train_lora(train_config(cfg, task.style, out, pipe.dtype), pipe=pipe)
    ctx.cache["lora"] = task.style  # training leaves this style's LoRA in the pipeline
    return {"lora": lora_path(task.style)}


def generate(cfg: RunConfig, task: Task, ctx: WorkerContext, pipe) -> dict[str, Any]:
    _use_lora(pipe, ctx, task.style if cfg.trains else None)
    prompt = cfg.prompt(task.style, task.prompt)
    image = pipe.text_to_image(prompt, num_inference_steps=cfg.steps, guidance_scale=cfg.guidance,
                               height=cfg.size, width=cfg.size, generator=np.random.default_rng(cfg.seed))[0]
    final = task.outputs[0] == final_path(task.style, task.prompt)
    _save(image, ctx.out_dir / task.outputs[0], OUTPUT_SIZE if final else None)
    return {"prompt": prompt}


def _reference(cfg: RunConfig, content: np.ndarray, style: str) -> Path:
    from ..methods.reference import choose_reference

    return choose_reference(content, list_images(Path(cfg.data) / style), cfg.reference)


def inject(cfg: RunConfig, task: Task, ctx: WorkerContext, pipe) -> dict[str, Any]:
    from ..images import load_image

    style_dir = Path(cfg.data) / task.style
    if cfg.method == "sdedit":
        from ..methods.sdedit import img2img, mean_image

        _use_lora(pipe, ctx, task.style)
        key = ("mean", task.style, cfg.size)
        if key not in ctx.cache:
            ctx.cache[key] = mean_image(list_images(style_dir), cfg.size)
        prompt = cfg.prompt(task.style, task.prompt)
        image = img2img(pipe, ctx.cache[key], [prompt], strength=cfg.strength, num_inference_steps=cfg.sdedit_steps,
                        guidance_scale=cfg.guidance, generator=np.random.default_rng(cfg.seed))[0]
        _save(image, ctx.out_dir / task.outputs[0], OUTPUT_SIZE)
        return {"prompt": prompt, "init": "mean of references"}
    content = load_image(ctx.out_dir / content_path(task.style, task.prompt), cfg.size)
    ref = _reference(cfg, content, task.style)
    _use_lora(pipe, ctx, None)  # the style comes from the reference image, not the LoRA
    if cfg.method in ("styleid", "styleid_dreambooth"):
        from ..methods.styleid import StyleIDConfig, invert_style, stylize

        scfg = StyleIDConfig(gamma=cfg.gamma, T=cfg.temperature, steps=cfg.styleid_steps,
                             start_step=max(1, cfg.styleid_steps - 1))
        key = ("styleid", str(ref), cfg.size, scfg)
        if key not in ctx.cache:
            ctx.cache = {k: v for k, v in ctx.cache.items() if not (isinstance(k, tuple) and k[0] == "styleid")}
            ctx.cache[key] = invert_style(pipe, load_image(ref, cfg.size), scfg)
        image = stylize(pipe, content[None], ctx.cache[key], scfg)[0]
    elif cfg.method == "diffstyle":
        from ..methods.diffstyle import DiffStyleConfig, diffstyle

        # t_boost 0: no quality boosting, as the paper advises for artistic references
        dcfg = DiffStyleConfig(gamma=cfg.diffstyle_gamma, t_boost=0, steps=cfg.styleid_steps,
                               start_step=max(1, cfg.styleid_steps - 1), seed=cfg.seed)
        image = diffstyle(pipe, content[None], load_image(ref, cfg.size), dcfg)[0]
    else:
        raise ConfigError(f"method {cfg.method} has no inject stage")
    _save(image, ctx.out_dir / task.outputs[0], OUTPUT_SIZE)
    return {"reference": ref.name}


STAGES = {"train": train, "generate": generate, "inject": inject}


def execute(task: Task, ctx: WorkerContext) -> dict[str, Any]:
    """Run one task of the plan in this worker (the workers' entry point)."""
    cfg = RunConfig.from_dict(ctx.config)
    return STAGES[task.stage](cfg, task, ctx, _pipeline(cfg, ctx))
