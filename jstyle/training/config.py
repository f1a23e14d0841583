"""DreamBooth-LoRA training settings: one frozen dataclass, the challenge baseline as defaults, presets."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError
from ..lora import COMPONENTS, DEFAULT_TARGETS, INITS
from .optim import SCHEDULES
from .timesteps import STYLE_FRIENDLY_MEAN, STYLE_FRIENDLY_STD, TIMESTEP_SAMPLINGS

__all__ = ["LoRATrainConfig", "PRESETS", "preset", "RESUME_FREE_FIELDS", "resume_checkpointing"]

PRECISIONS = ("no", "fp16")
CROPS = ("random", "center")
# how an image reaches resolution * resize_margin: "crop" = the short side is resized (aspect kept), then cropped;
# "squash" = the whole image resized to a square (bilinear), as jittor.transform.Resize(int) (jstyle.io FITS)
RESIZES = ("crop", "squash")
# class images: "same" = the instance images' augment; "resize" = resolution, centre, no flip (JDiffArtFlow's
# class_transforms: Resize(512) + CenterCrop(512))
CLASS_TRANSFORMS = ("same", "resize")


@dataclass(frozen=True)
class LoRATrainConfig:
    """Defaults = the JDiffusion challenge baseline (rank 4, alpha = rank, lr 1e-4 constant, batch 1,
    500 steps, 512 px, seed 0, UNet attention to_q/to_k/to_v/to_out.0 only)."""

    # data
    style_dir: str = ""
    style_dirs: tuple[str, ...] = ()  # several style folders in one LoRA (instead of style_dir), each its own {id}
    style_id: str | None = None  # default: the style folder's name
    instance_template: str = "style_{id}"  # fields: {id}, {obj} (caption or file stem), {caption}
    caption_prefix: str = ""
    resolution: int = 512
    resize: str = "crop"  # crop | squash (RESIZES)
    crop: str = "random"
    resize_margin: float = 1.0  # 1.04 = resize to 1.04 x resolution, then crop (a measured gain)
    hflip: bool = False
    # prior preservation (DreamBooth)
    prior_preservation: bool = False
    class_prompt: str = "an image of {obj}"  # one class prompt per distinct {obj} of the style
    class_generation_prompt: str | None = None  # the prompt class images are made with (None = class_prompt)
    num_class_images: int = 50
    class_dir: str | None = None  # default: <output_dir>/class_images
    prior_loss_weight: float = 1.0
    class_transform: str = "same"  # same | resize (CLASS_TRANSFORMS)
    class_inference_steps: int = 25
    class_guidance_scale: float = 7.5
    # LoRA
    rank: int = 4
    alpha: float | None = None  # None = rank
    dropout: float = 0.0
    init: str = "gaussian"
    unet_targets: tuple[str, ...] = DEFAULT_TARGETS["unet"]
    text_encoder_targets: tuple[str, ...] = ()  # e.g. q_proj, k_proj, v_proj, out_proj
    vae_targets: tuple[str, ...] = ()
    # optimisation
    max_train_steps: int = 500
    train_batch_size: int = 1
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1e-4
    text_encoder_lr: float | None = None  # None = learning_rate
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    lr_step_size: int = 1  # lr_scheduler "step": lr * lr_step_gamma^(step // lr_step_size) (torch's StepLR)
    lr_step_gamma: float = 1.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 1e-2
    adam_epsilon: float = 1e-8
    max_grad_norm: float | None = None  # None = no clipping
    # training timesteps (jstyle.training.timesteps): uniform, or style-friendly (log-SNR ~ N(snr_mean, snr_std^2))
    timestep_sampling: str = "uniform"
    snr_mean: float = STYLE_FRIENDLY_MEAN
    snr_std: float = STYLE_FRIENDLY_STD
    mixed_precision: str = "no"  # fp16: frozen base in float16 (CUDA), LoRA and loss in float32, dynamic loss scale
    gradient_checkpointing: bool = False  # recompute UNet block activations in the backward pass (less memory)
    seed: int = 0
    # output
    output_dir: str = "lora_out"
    checkpointing_steps: int = 0  # 0 = only the final LoRA
    checkpoints_total_limit: int | None = None  # keep only the newest N checkpoints (None = all)
    resume: str | None = None  # a checkpoint folder, or "latest"
    progress: bool = True
    extras: dict[str, Any] = field(default_factory=dict)  # free-form notes kept in the log

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> ConfigError:
            return ConfigError(f"{name}={getattr(self, name)!r}: {why}")

        if not isinstance(self.rank, int) or self.rank <= 0:
            raise bad("rank", "must be a positive integer")
        if self.alpha is not None and self.alpha <= 0:
            raise bad("alpha", "must be > 0")
        if not 0 <= self.dropout < 1:
            raise bad("dropout", "must be in [0, 1)")
        if self.init not in INITS:
            raise bad("init", f"use one of {', '.join(INITS)}")
        for name in ("max_train_steps", "train_batch_size", "gradient_accumulation_steps", "resolution"):
            if getattr(self, name) <= 0:
                raise bad(name, "must be > 0")
        if self.resolution % 8:
            raise bad("resolution", "must be a multiple of 8")
        if self.lr_scheduler not in SCHEDULES:
            raise bad("lr_scheduler", f"use one of {', '.join(SCHEDULES)}")
        if self.lr_step_size <= 0 or self.lr_step_gamma <= 0:
            raise bad("lr_step_size", "lr_step_size and lr_step_gamma must be > 0")
        if self.learning_rate <= 0 or self.lr_warmup_steps < 0:
            raise bad("learning_rate", "must be > 0 (and lr_warmup_steps >= 0)")
        if self.crop not in CROPS:
            raise bad("crop", f"use one of {', '.join(CROPS)}")
        if self.resize not in RESIZES:
            raise bad("resize", f"use one of {', '.join(RESIZES)}")
        if self.class_transform not in CLASS_TRANSFORMS:
            raise bad("class_transform", f"use one of {', '.join(CLASS_TRANSFORMS)}")
        if self.resize_margin < 1.0:
            raise bad("resize_margin", "must be >= 1 (1.04 = resize 4% larger, then crop)")
        if self.mixed_precision not in PRECISIONS:
            raise bad("mixed_precision", f"use one of {', '.join(PRECISIONS)}")
        if self.max_grad_norm is not None and self.max_grad_norm <= 0:
            raise bad("max_grad_norm", "must be > 0 (or None for no clipping)")
        if self.timestep_sampling not in TIMESTEP_SAMPLINGS:
            raise bad("timestep_sampling", f"use one of {', '.join(TIMESTEP_SAMPLINGS)}")
        if self.snr_std <= 0:
            raise bad("snr_std", "must be > 0")
        if self.style_dirs and (self.style_dir or self.style_id is not None):
            raise bad("style_dirs", "several style folders take neither style_dir nor style_id (each folder's "
                      "name is its {id})")
        if self.style_dirs and "{id}" not in self.instance_template:
            raise bad("instance_template", "one LoRA for several styles needs {id} in it, so that each style has "
                      "its own token (e.g. style_{id})")
        if self.checkpoints_total_limit is not None and self.checkpoints_total_limit <= 0:
            raise bad("checkpoints_total_limit", "must be > 0 (or None to keep every checkpoint)")
        if self.prior_preservation and self.num_class_images <= 0:
            raise bad("num_class_images", "must be > 0 with prior preservation")
        if not (self.unet_targets or self.text_encoder_targets or self.vae_targets):
            raise ConfigError("no LoRA targets: give unet_targets, text_encoder_targets or vae_targets")
        try:
            self.instance_template.format(id="x", obj="x", caption="x")
            self.class_prompt.format(obj="x", caption="x")
            (self.class_generation_prompt or "").format(obj="x", caption="x")
        except (KeyError, IndexError, ValueError) as e:
            raise ConfigError(f"prompt template has an unknown field {e}; use {{id}}, {{obj}}, {{caption}}")

    @property
    def lora_alpha(self) -> float:
        return float(self.rank if self.alpha is None else self.alpha)

    def targets(self) -> dict[str, tuple[str, ...]]:
        t = {"unet": self.unet_targets, "text_encoder": self.text_encoder_targets, "vae": self.vae_targets}
        return {k: tuple(v) for k, v in t.items() if v and k in COMPONENTS}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def fingerprint(self) -> str:
        """Hash of everything that changes the trained LoRA (not output paths, resume, logging)."""
        d = {k: v for k, v in self.to_dict().items() if k not in RESUME_FREE_FIELDS}
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LoRATrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"unknown training setting '{unknown[0]}'")
        d = {k: tuple(v) if k.endswith("_targets") or k == "style_dirs" else v for k, v in d.items()}
        return cls(**d)


# Fields a resumed run may change: where things go and how they are shown, not what is learned.
RESUME_FREE_FIELDS = ("output_dir", "resume", "progress", "checkpointing_steps", "checkpoints_total_limit",
                      "extras", "class_dir", "gradient_checkpointing")

_TEXT_QKVO = ("q_proj", "k_proj", "v_proj", "out_proj")
PRESETS: dict[str, dict[str, Any]] = {
    # the JDiffusion challenge baseline
    "baseline": {},
    # public solutions' measured upgrades: rank 32, 800 steps, prior preservation, templated prompts,
    # text-encoder LoRA at a lower lr, resize 1.04x then random crop
    "strong": dict(
        rank=32, max_train_steps=800, prior_preservation=True, prior_loss_weight=1.0,
        instance_template="an image of {obj} in style_{id}", class_prompt="an image of {obj}",
        text_encoder_targets=_TEXT_QKVO, text_encoder_lr=5e-5, resize_margin=1.04,
    ),
    # a seed's module ablation: text encoder q/v, VAE attention, UNet q/v; rank 8, alpha 16, dropout 0.05
    "multi_module": dict(
        rank=8, alpha=16.0, dropout=0.05, unet_targets=("to_q", "to_v"),
        text_encoder_targets=("q_proj", "v_proj"), vae_targets=("to_q", "to_k", "to_v"),
    ),
    # a seed's DreamBooth recipe (prior preservation, ~50 class images, text encoder trained, lr 1e-6,
    # 800 steps), here with LoRA on UNet and text encoder instead of full fine-tuning
    "dreambooth": dict(
        prior_preservation=True, num_class_images=50, text_encoder_targets=_TEXT_QKVO,
        learning_rate=1e-6, max_train_steps=800,
    ),
}


def mixed_precision_for(base_dtype: str) -> str:
    """The precision LoRA training on a base in `base_dtype` runs in: a float16 base needs "fp16" (float32 LoRA
    tensors, a dynamic loss scale), as diffusers' scripts tie a float16 weight_dtype to --mixed_precision fp16."""
    return "fp16" if base_dtype == "float16" else "no"


def resume_checkpointing(max_train_steps: int) -> dict[str, int]:
    """The checkpoint settings that let a killed training resume (`LoRATrainer.train_resuming`): a checkpoint every
    tenth of the steps, only the newest kept."""
    return {"checkpointing_steps": max(1, max_train_steps // 10), "checkpoints_total_limit": 1}


def preset(name: str, **overrides: Any) -> LoRATrainConfig:
    """A named recipe (PRESETS) with overrides, e.g. preset('strong', style_dir='data/03')."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset '{name}'; use one of {', '.join(PRESETS)}")
    return LoRATrainConfig.from_dict({**PRESETS[name], **overrides})
