"""StyleBlend (Chen et al., Eurographics 2025): a fine and a coarse style representation blended in one batch.

Follows the team's Jittor code, zichongc/jittor-L6810K2-StyleTransfer @ d6e9b89 (0.4823 on the challenge's list B):
- coarse style (coarse_style_training.py): each reference is edited by SDEdit towards "A {obj}, realistic." (strength
  drawn from 0.75 / 0.8 / 0.85, 20 steps, negative "ugly, low quality, blur, distorted": same layout, other look);
  a text-encoder LoRA (rank 16 on q/k/v/out_proj, lr 1e-4, 300 steps) learns "A {obj} in the style of <C>." on
  those images, `<C>` staying at its initial embedding ("&"): the Jittor code optimises the LoRA only;
- fine style (fine_style_training.py): textual inversion of `<F>` (init "artistic", lr 0.01, beta1 0.85, StepLR
  30 x 0.7, 500 steps), then a UNet LoRA (rank 16 on to_q/k/v/out.0, lr 5e-4, StepLR 200 x 0.5, 500 steps), both on
  "A {obj} in the style of <F>." with horizontal flips;
- inference (pipeline.py, modules.py): rows [coarse uncond, fine uncond, coarse, fine] in one batch from one noise,
  the coarse rows through the text-encoder LoRA and the UNet LoRA at `scale`, the fine rows without the text
  LoRA and with the full UNet LoRA; the coarse branch's self-attention Q goes to the fine branch in the c2f layers
  and the fine branch's K, V to the coarse branch in the f2c layers (jstyle.methods.styleblend_processors); the
  fine branch is the result. Negative prompt "blur" for the fine branch, "" for the coarse one, 30 DDIM steps.
Where jstyle differs (no CLIP filter of the SDEdit images, numpy noise): jstyle.recipes' `styleblend` notes.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, InputError

__all__ = ["StyleBlendConfig", "styled_prompt", "default_layers", "parse_layers", "train", "generate", "inject",
           "FINE_TOKEN", "COARSE_TOKEN"]

FINE_TOKEN, COARSE_TOKEN = "<F>", "<C>"
FINE_INIT, COARSE_INIT = "artistic", "&"  # configs/training_config.yaml init_token
SDEDIT_STRENGTHS = (0.85, 0.8, 0.75)  # PlausibleDataCreator.generate: random.choice per image
SDEDIT_PROMPT, SDEDIT_NEGATIVE = "{a} {obj}, realistic.", "ugly, low quality, blur, distorted"
COARSE_DIR, FINE_TI_DIR, FINE_LORA_DIR, DATA_DIR = "coarse", "fine_ti", "fine_lora", "coarse_data"


def _help(text: str, default: Any = None) -> dict[str, Any]:
    return {"help": text, **({"default": default} if default is not None else {})}


@dataclass(frozen=True)
class StyleBlendConfig:
    """configs/parameters.json's most frequent entry and register_styleblend_modules' defaults; the training values
    of configs/training_config.yaml (Jittor repository)."""

    c2f_layers: str = field(default="auto", metadata=_help(
        "self-attention layers (0-15 on SD) where the coarse Q goes to the fine branch: comma list, or auto = the "
        "deepest down block with attention, the mid block and the first up block with attention (SD: 4-9)"))
    f2c_layers: str = field(default="auto", metadata=_help(
        "layers where the fine K, V go to the coarse branch: comma list, or auto = the other layers (SD: 0-3, 10-15)"))
    scale: float = field(default=0.3, metadata=_help("UNet LoRA scale of the coarse branch"))
    c2f_step_ratio: float = field(default=0.8, metadata=_help("c2f (and both-way) layers blend on the first "
                                                              "int(ratio x steps) steps"))
    f2c_step_ratio: float = field(default=0.6, metadata=_help("f2c layers blend on the first int(ratio x steps)"))
    steps: int = field(default=30, metadata=_help("DDIM steps"))
    negative_prompt: str = field(default="blur", metadata=_help("negative prompt of the fine branch"))
    parameters: str = field(default="", metadata=_help(
        "the official configs/parameters.json: per-style layers, scale, step ratios and per-prompt seeds"))
    ti_steps: int = field(default=500, metadata=_help("textual-inversion steps of <F> (--train-steps sets all three)"))
    ti_lr: float = field(default=0.01, metadata=_help("textual-inversion learning rate (StepLR 30 x 0.7)"))
    lora_steps: int = field(default=500, metadata=_help("UNet LoRA steps of the fine style"))
    lora_lr: float = field(default=5e-4, metadata=_help("UNet LoRA learning rate (StepLR 200 x 0.5)"))
    coarse_steps: int = field(default=300, metadata=_help("text-encoder LoRA steps of the coarse style"))
    coarse_lr: float = field(default=1e-4, metadata=_help("text-encoder LoRA learning rate (constant)"))
    rank: int = field(default=16, metadata=_help("rank of both LoRAs (alpha = rank)"))
    sdedit_images: int = field(default=10, metadata=_help("SDEdit images per reference for the coarse style"))
    sdedit_steps: int = field(default=20, metadata=_help("SDEdit steps (of which strength x steps run)"))
    # from the run (registry derive): not flags
    seed: int = 0
    train_steps: int | None = None  # run_all's --train-steps: ti_steps, lora_steps and coarse_steps at once

    def __post_init__(self) -> None:
        for name in ("c2f_layers", "f2c_layers"):
            parse_layers(getattr(self, name), name)
        if not (0 <= self.c2f_step_ratio <= 1 and 0 <= self.f2c_step_ratio <= 1):
            raise ConfigError("StyleBlend step ratios must be in [0, 1]")
        for name in ("steps", "ti_steps", "lora_steps", "coarse_steps", "rank", "sdedit_images", "sdedit_steps"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"StyleBlend {name} must be > 0, got {getattr(self, name)}")

    def training_steps(self) -> tuple[int, int, int]:
        """(textual inversion, UNet LoRA, text-encoder LoRA) steps."""
        if self.train_steps is not None:
            return (self.train_steps,) * 3
        return self.ti_steps, self.lora_steps, self.coarse_steps

    def for_style(self, style: str, obj: str, seed: int) -> tuple[StyleBlendConfig, int]:
        """(these settings with the style's entry of `parameters` over them, the prompt's seed there or `seed`)."""
        if not self.parameters:
            return self, seed
        path = Path(self.parameters)
        try:
            entry = json.loads(path.read_text())[style]
        except FileNotFoundError:
            raise InputError(f"{path}: StyleBlend parameters file not found") from None
        except (KeyError, json.JSONDecodeError, TypeError) as e:
            raise InputError(f"{path}: no usable entry for style '{style}' ({e}); use the official "
                             "configs/parameters.json layout") from None
        over = {"c2f_layers": ",".join(map(str, entry.get("c2f_self_attn_layers_to_register", []))),
                "f2c_layers": ",".join(map(str, entry.get("f2c_self_attn_layers_to_register", []))),
                "scale": entry.get("scale", self.scale),
                "c2f_step_ratio": entry.get("c2f_step_ratio", self.c2f_step_ratio),
                "f2c_step_ratio": entry.get("f2c_step_ratio", self.f2c_step_ratio)}
        return dataclasses.replace(self, **over), int(entry.get("seed", {}).get(obj, seed))


def parse_layers(text: str, name: str = "layers") -> list[int] | None:
    """'auto' -> None, '4,5,6' -> [4, 5, 6], '' -> []."""
    if text.strip() == "auto":
        return None
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ConfigError(f"StyleBlend {name} {text!r}: a comma list of layer numbers, or auto") from None


def default_layers(ordered: list[str]) -> tuple[list[int], list[int]]:
    """(c2f, f2c) of the official defaults by structure: c2f = the deepest down block with attention, the mid block
    and the first up block with attention ([4..9] on SD 1.x/2.x, as register_styleblend_modules), f2c = the rest."""
    def block(name: str) -> tuple[str, int]:
        parts = name.split(".")
        return parts[0], int(parts[1]) if parts[1].isdigit() else 0

    downs = [block(n)[1] for n in ordered if n.startswith("down_blocks")]
    ups = [block(n)[1] for n in ordered if n.startswith("up_blocks")]
    deep = {("down_blocks", max(downs, default=-1)), ("up_blocks", min(ups, default=-1))}
    c2f = [i for i, n in enumerate(ordered) if n.startswith("mid_block") or block(n) in deep]
    return c2f, [i for i in range(len(ordered)) if i not in c2f]


def styled_prompt(obj: str, token: str) -> str:
    """'A bicycle in the style of <F>.' (the official datasets' and test.py's prompt: its article, lower case)."""
    obj = obj.lower()
    return f"{_article(obj).title()} {obj} in the style of {token}."


def _article(obj: str) -> str:
    return "an" if obj[:1].lower() in "aeiou" else "a"  # aan()


# ----------------------------------------------------------------------------------------------- training


def _examples(style_dir: Path, token: str, size: int):
    from ..training.config import LoRATrainConfig
    from ..training.dataset import load_style_examples

    cfg = LoRATrainConfig(style_dir=str(style_dir), resolution=size)
    return [dataclasses.replace(e, prompt=styled_prompt(e.obj, token)) for e in load_style_examples(cfg)]


def _base_training(style_dir: Path, folder: Path, size: int, seed: int, dtype: str, steps: int) -> dict[str, Any]:
    """The settings every StyleBlend training shares: square resize as the official datasets, batch 1, and
    run_all's checkpoints (every tenth of the steps) that a killed run resumes from."""
    from ..training.config import mixed_precision_for, resume_checkpointing

    return dict(style_dir=str(style_dir), output_dir=str(folder), resolution=size, resize="squash", crop="center",
                seed=seed, progress=False, mixed_precision=mixed_precision_for(dtype), max_train_steps=steps,
                **resume_checkpointing(steps))


def make_coarse_data(pipe, st: StyleBlendConfig, style_dir: Path, folder: Path, size: int, seed: int) -> list:
    """SDEdit images of each reference (folder/<stem>-NNN.png, reused when present) as training examples."""
    from ..io import read_rgb, save_png
    from ..training.dataset import Example
    from .sdedit import img2img

    out = []
    for e in _examples(style_dir, COARSE_TOKEN, size):
        rng = np.random.default_rng([seed, 7, *map(ord, e.path.stem)])
        for i in range(st.sdedit_images):
            path = folder / f"{e.path.stem}-{i:03d}.png"
            strength = float(rng.choice(SDEDIT_STRENGTHS))
            gen = np.random.default_rng([seed, 8, i, *map(ord, e.path.stem)])
            if not path.is_file():
                prompt = SDEDIT_PROMPT.format(a=_article(e.obj).title(), obj=e.obj.lower())
                image = img2img(pipe, read_rgb(e.path, size, fit="squash"), [prompt], strength=strength,
                                num_inference_steps=st.sdedit_steps, guidance_scale=7.5,
                                negative_prompt=SDEDIT_NEGATIVE, generator=gen)[0]
                save_png(image, path)
            out.append(Example(path, read_rgb(path), e.prompt, e.obj))
    return out


def train(pipe, st: StyleBlendConfig, style_dir: Path, folder: Path, size: int,
          resumed: dict[str, int] | None = None) -> Path:
    """Train one style's StyleBlend weights into `folder`: coarse_data/, coarse/ (text-encoder LoRA and <C>),
    fine_ti/ (<F>), fine_lora/ (UNet LoRA), then pytorch_lora_weights.safetensors holding both LoRAs (written
    last: its presence means done). A training whose file exists is loaded instead of trained, one a killed run
    was in resumes from its last checkpoint (every tenth of its steps; deleted once its file is written).
    `resumed` gets, per training run here (by folder name), the step it started from."""
    from .. import lora as L
    from ..textual_inversion import WEIGHT_NAME as TI_NAME
    from ..textual_inversion import add_tokens, save_learned_embeds
    from ..training.config import LoRATrainConfig
    from ..training.textual_inversion import TextualInversionConfig, TextualInversionTrainer
    from ..training.trainer import LoRATrainer

    ti_steps, lora_steps, coarse_steps = st.training_steps()
    L.unload_lora(pipe)
    base = lambda sub, steps: _base_training(style_dir, folder / sub, size, st.seed, pipe.dtype, steps)  # noqa: E731
    resumed = {} if resumed is None else resumed
    # coarse: SDEdit data from the base model, <C> at its initial embedding, a text-encoder LoRA
    init = pipe.text_encoder.embeddings.token_embedding.weight[pipe.tokenizer.encode(COARSE_INIT, False)[0]]
    init = init.float32().numpy()
    add_tokens(pipe.tokenizer, pipe.text_encoder, {COARSE_TOKEN: init})
    coarse_file = folder / COARSE_DIR / L.WEIGHT_NAME
    if not coarse_file.is_file():
        save_learned_embeds(folder / COARSE_DIR / TI_NAME, COARSE_TOKEN, init)  # first: the LoRA file means done
        data = make_coarse_data(pipe, st, style_dir, folder / DATA_DIR, size, st.seed)
        cfg = LoRATrainConfig(**base(COARSE_DIR, coarse_steps), unet_targets=(), rank=st.rank,
                              text_encoder_targets=("q_proj", "k_proj", "v_proj", "out_proj"),
                              learning_rate=st.coarse_lr)
        resumed[COARSE_DIR] = LoRATrainer.train_resuming(pipe, cfg, data)[1]
    else:
        L.load_lora_weights(pipe.text_encoder, L.read_lora_file(coarse_file).layers["text_encoder"], "text_encoder",
                            str(coarse_file))
    L.set_lora_scale(pipe.text_encoder, 0.0)  # the fine style learns on the base text encoder
    try:
        ti_file = folder / FINE_TI_DIR / TI_NAME
        if not ti_file.is_file():
            cfg = TextualInversionConfig(**base(FINE_TI_DIR, ti_steps), placeholder_token=FINE_TOKEN,
                                         initializer_token=FINE_INIT, hflip=True,
                                         instance_template=f"a {{obj}} in the style of {FINE_TOKEN}.",
                                         learning_rate=st.ti_lr, adam_beta1=0.85, lr_scheduler="step",
                                         lr_step_size=30, lr_step_gamma=0.7)
            examples = _examples(style_dir, FINE_TOKEN, size)
            resumed[FINE_TI_DIR] = TextualInversionTrainer.train_resuming(pipe, cfg, examples)[1]
        else:
            pipe.load_textual_inversion(ti_file)
        lora_file = folder / FINE_LORA_DIR / L.WEIGHT_NAME
        if not lora_file.is_file():
            cfg = LoRATrainConfig(**base(FINE_LORA_DIR, lora_steps), rank=st.rank, hflip=True,
                                  learning_rate=st.lora_lr, lr_scheduler="step", lr_step_size=200, lr_step_gamma=0.5)
            resumed[FINE_LORA_DIR] = LoRATrainer.train_resuming(pipe, cfg, _examples(style_dir, FINE_TOKEN, size))[1]
        else:
            L.load_lora_weights(pipe.unet, L.read_lora_file(lora_file).layers["unet"], "unet", str(lora_file))
    finally:
        L.set_lora_scale(pipe.text_encoder, 1.0)
    return L.save_lora(folder / L.WEIGHT_NAME, {"unet": pipe.unet, "text_encoder": pipe.text_encoder})


def load_tokens(pipe, folder: Path) -> None:
    """<F> and <C> of a trained style (folder as `train` wrote it) into the pipeline."""
    from ..textual_inversion import WEIGHT_NAME as TI_NAME

    for sub in (COARSE_DIR, FINE_TI_DIR):
        pipe.load_textual_inversion(folder / sub / TI_NAME)


# ----------------------------------------------------------------------------------------------- inference


def generate(pipe, obj: str, st: StyleBlendConfig, size: int, guidance: float, seed: int,
             scheduler: str = "ddim") -> tuple[np.ndarray, np.ndarray]:
    """(fine image, coarse image), uint8 [size, size, 3], of `obj` with the pipeline's StyleBlend weights loaded
    (both LoRAs, <F> and <C>)."""
    import jittor as jt

    from .. import lora as L
    from ..schedulers.common import batch_randn
    from .styleblend_processors import StepCounter, self_attention_layers, styleblend_processors

    if guidance <= 1.0:
        raise InputError(f"StyleBlend runs with classifier-free guidance (its 4-row batch); guidance {guidance}")
    te = pipe.text_encoder
    L.set_lora_scale(te, 0.0)  # the fine branch: the base text encoder
    try:
        fine = pipe.encode_prompt([st.negative_prompt, styled_prompt(obj, FINE_TOKEN)])
        L.set_lora_scale(te, 1.0)
        coarse = pipe.encode_prompt(["", styled_prompt(obj, COARSE_TOKEN)])
    finally:
        L.set_lora_scale(te, 1.0)
    context = jt.concat([coarse[0:1], fine[0:1], coarse[1:2], fine[1:2]]).cast(pipe.dtype)
    gen = np.random.default_rng(seed)
    sched, step_kwargs = pipe.sampler(scheduler, st.steps, generator=gen)
    f = pipe.vae_scale_factor
    noise = batch_randn((1, pipe.unet.config.get("in_channels", 4), size // f, size // f), gen, pipe.dtype)
    latents = jt.concat([noise, noise]) * sched.init_noise_sigma  # one noise for both branches
    names = [n.removesuffix(".processor") for n in pipe.unet.attn_processors]
    ordered = self_attention_layers(names)
    auto_c2f, auto_f2c = default_layers(ordered)
    c2f, f2c = parse_layers(st.c2f_layers), parse_layers(st.f2c_layers)
    counter = StepCounter()
    procs = styleblend_processors(names, auto_c2f if c2f is None else c2f, auto_f2c if f2c is None else f2c,
                                  st.scale, int(st.c2f_step_ratio * st.steps), int(st.f2c_step_ratio * st.steps),
                                  counter)
    saved = pipe.unet.attn_processors
    pipe.unet.set_attn_processor({f"{k}.processor": v for k, v in procs.items()})
    try:
        latents = pipe.denoise(latents, context, sched, guidance_scale=guidance, step_kwargs=step_kwargs,
                               callback=counter)
    finally:
        pipe.unet.set_attn_processor(saved)
    coarse_image, fine_image = pipe.decode_latents(latents)
    return fine_image, coarse_image


def inject(pipe, job) -> tuple[np.ndarray, dict]:
    """run_all's inject stage: the fine branch of StyleBlend for job.obj, the style's weights loaded (the LoRAs by
    the stage, <F> and <C> here from job.lora_dir)."""
    key = ("styleblend-tokens", job.style)
    if job.cache.get("styleblend-tokens") != key:
        load_tokens(pipe, Path(job.lora_dir))
        job.cache["styleblend-tokens"] = key
    st, seed = job.settings.for_style(job.style, job.obj, job.seed)
    image, _ = generate(pipe, job.obj, st, job.size, job.guidance, seed, job.scheduler)
    return image, {"prompt": styled_prompt(job.obj, FINE_TOKEN), "seed": seed}


def train_stage(pipe, run, style: str, folder: Path) -> dict[str, Any]:
    """run_all's train stage for StyleBlend (jstyle.methods.registry `Method.train`)."""
    st, resumed = run.method_settings(), {}
    path = train(pipe, st, Path(run.data) / style, folder, run.train_size or run.size, resumed)
    return {"weights": path.name, "tokens": [FINE_TOKEN, COARSE_TOKEN], "resumed_from_step": resumed}
