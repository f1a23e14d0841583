"""What a run does: its settings (RunConfig) and the task graph they imply, per style and prompt.

Stages per style: train its LoRA -> generate content per prompt -> inject the style -> <out>/<style>/<Prompt>.png.
Which stages a method uses:

| method             | train | generate (content)             | inject                                  |
|--------------------|-------|--------------------------------|-----------------------------------------|
| dreambooth         | yes   | "{obj} in style_NN", final     | -                                       |
| sdedit             | yes   | -                              | img2img from the references' pixel mean |
| styleid            | -     | "{obj}" with the base model    | StyleID with a reference image          |
| styleid_dreambooth | yes   | "{obj} in style_NN" (LoRA)     | StyleID with a reference image          |
| diffstyle          | -     | "{obj}" with the base model    | DiffStyle with a reference image        |
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .graph import Task, TaskGraph

__all__ = ["METHODS", "RunConfig", "build_graph", "lora_path", "content_path", "final_path"]

METHODS = ("dreambooth", "styleid", "styleid_dreambooth", "sdedit", "diffstyle")
TRAINS = ("dreambooth", "styleid_dreambooth", "sdedit")
GENERATES = ("dreambooth", "styleid", "styleid_dreambooth", "diffstyle")
INJECTS = ("styleid", "styleid_dreambooth", "sdedit", "diffstyle")
REFERENCE_RULES = ("first", "nearest")
# settings that do not change any output (left out of the manifest's config hash)
RUNTIME_ONLY = ("out", "devices", "backend", "address", "retries", "progress", "gradient_checkpointing")


@dataclass(frozen=True)
class RunConfig:
    """Everything that decides a run's outputs (and a few runtime knobs listed in RUNTIME_ONLY)."""

    data: str
    model: str
    out: str
    method: str = "styleid_dreambooth"
    styles: tuple[str, ...] = ()  # empty = every style folder in data
    preset: str = "baseline"  # LoRA recipe: jstyle.training.PRESETS
    size: int = 512  # generation size in pixels (outputs are always saved at 512x512)
    steps: int = 25  # text-to-image DDIM steps
    guidance: float = 7.5
    seed: int = 0
    train_steps: int | None = None  # None = the preset's
    train_size: int | None = None  # None = size
    gradient_checkpointing: bool = False  # LoRA training: recompute UNet blocks (less memory, same result)
    strength: float = 0.9  # SDEdit
    sdedit_steps: int = 40
    styleid_steps: int = 50  # StyleID and DiffStyle DDIM steps (the noisiest, t = 981, is skipped)
    gamma: float = 0.75  # StyleID query preservation
    temperature: float = 1.5  # StyleID attention temperature
    diffstyle_gamma: float = 0.3  # DiffStyle content injection ratio
    reference: str = "first"  # which reference image the injection uses: first | nearest
    devices: str = "auto"
    backend: str = "local"
    address: str | None = None
    retries: int = 1
    progress: bool = True

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"--method {self.method!r}: use one of {', '.join(METHODS)}")
        if self.reference not in REFERENCE_RULES:
            raise ConfigError(f"--reference {self.reference!r}: use one of {', '.join(REFERENCE_RULES)}")
        if self.backend not in ("local", "ray"):
            raise ConfigError(f"--backend {self.backend!r}: use local or ray")
        for name in ("size", "steps", "sdedit_steps", "styleid_steps"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be > 0, got {getattr(self, name)}")
        if self.size % 8 or (self.train_size or 8) % 8:
            raise ConfigError(f"--size must be a multiple of 8, got {self.size}")
        if not (0.0 <= self.gamma <= 1.0 and 0.0 <= self.diffstyle_gamma <= 1.0 and 0.0 < self.strength <= 1.0):
            raise ConfigError("--gamma and --diffstyle-gamma must be in [0, 1], --strength in (0, 1]")
        if self.guidance < 0 or self.retries < 0:
            raise ConfigError("--guidance and --retries must be >= 0")
        object.__setattr__(self, "styles", tuple(self.styles))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"unknown run setting '{unknown[0]}' (known: {', '.join(sorted(names))})")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def hashed(self) -> dict[str, Any]:
        """The settings that decide the outputs: the manifest's config hash covers exactly these."""
        return {k: v for k, v in self.to_dict().items() if k not in RUNTIME_ONLY}

    @property
    def trains(self) -> bool:
        return self.method in TRAINS

    def prompt(self, style: str, obj: str) -> str:
        """The text prompt of a generated image: the LoRA's trigger words when the method trains one."""
        if not self.trains:
            return obj
        return f"an image of {obj} in style_{style}" if self.preset == "strong" else f"{obj} in style_{style}"


def lora_path(style: str) -> str:
    return f"work/{style}/lora/pytorch_lora_weights.safetensors"


def content_path(style: str, prompt: str) -> str:
    return f"work/{style}/content/{prompt}.png"


def final_path(style: str, prompt: str) -> str:
    return f"{style}/{prompt}.png"


def build_graph(cfg: RunConfig, prompts: dict[str, list[str]]) -> TaskGraph:
    """Tasks for {style: [object words]}; each waits only for what it reads."""
    graph = TaskGraph()
    for style, objs in prompts.items():
        train = None
        if cfg.trains:
            train = graph.add(Task(f"{style}/train", "train", style, outputs=(lora_path(style),))).key
        for obj in objs:
            after = (train,) if train else ()
            if cfg.method in GENERATES:
                out = final_path(style, obj) if cfg.method not in INJECTS else content_path(style, obj)
                after = (graph.add(Task(f"{style}/generate/{obj}", "generate", style, obj, after, (out,))).key,)
            if cfg.method in INJECTS:
                graph.add(Task(f"{style}/inject/{obj}", "inject", style, obj, after, (final_path(style, obj),)))
    return graph.validate()


def data_path(cfg: RunConfig, style: str) -> Path:
    return Path(cfg.data) / style
