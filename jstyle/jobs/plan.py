"""What a run does: its settings (RunConfig) and the task graph they imply, per style and prompt.

Stages per style: train its LoRA -> generate content per prompt -> inject the style -> <out>/<style>/<Prompt>.png.
Which stages a method runs, its prompt and its settings come from jstyle.methods.registry (`method_table()`
prints the table). The "{instance}" prompt is the style LoRA's instance prompt of the training preset
(jstyle.training.config), so generation asks for what training taught.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..methods import registry
from .graph import Task, TaskGraph

__all__ = ["RunConfig", "build_graph", "instance_prompt", "lora_path", "content_path", "final_path"]

REFERENCE_RULES = ("first", "nearest", "random")  # jstyle.methods.reference.RULES
# settings that do not change any output (left out of the manifest's config hash)
RUNTIME_ONLY = ("out", "devices", "backend", "address", "retries", "progress", "gradient_checkpointing")


@dataclass(frozen=True)
class RunConfig:
    """Everything that decides a run's outputs (and a few runtime knobs listed in RUNTIME_ONLY).

    `settings` holds the method settings given by key ("styleid_gamma": 0.5, see jstyle.methods.registry);
    an absent key is its dataclass default. to_dict() / from_dict() use flat keys, as run_all's flags."""

    data: str
    model: str
    out: str
    method: str = "styleid_dreambooth"
    styles: tuple[str, ...] = ()  # empty = every style folder in data
    preset: str = "baseline"  # LoRA recipe: jstyle.training.PRESETS
    size: int = 512  # generation size in pixels (outputs are always saved at 512x512)
    steps: int = 25  # text-to-image DDIM steps
    prompt_template: str | None = None  # the content prompt: "{obj}", "{instance}" (the LoRA's); None = the method's
    guidance: float = 7.5
    seed: int = 0
    train_steps: int | None = None  # None = the preset's
    train_size: int | None = None  # None = size
    gradient_checkpointing: bool = False  # LoRA training: recompute UNet blocks (less memory, same result)
    reference: str = "first"  # which reference image the injection uses: first | nearest | random
    devices: str = "auto"
    backend: str = "local"
    address: str | None = None
    retries: int = 1
    progress: bool = True
    settings: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        method = registry.get(self.method)
        if self.reference not in REFERENCE_RULES:
            raise ConfigError(f"--reference {self.reference!r}: use one of {', '.join(REFERENCE_RULES)}")
        if self.prompt_template is not None:
            try:
                self.prompt_template.format(**{k: "x" for k in registry.PROMPT_FIELDS})
            except (KeyError, IndexError, ValueError) as e:
                raise ConfigError(f"--prompt-template {self.prompt_template!r}: field {e} unknown; use {{obj}} or "
                                  "{instance}") from None
        if self.backend not in ("local", "ray"):
            raise ConfigError(f"--backend {self.backend!r}: use local or ray")
        for name in ("size", "steps"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"--{name} must be > 0, got {getattr(self, name)}")
        for name in ("size", "train_size"):
            value = getattr(self, name)
            if value is not None and (value <= 0 or value % 8):
                raise ConfigError(f"--{name.replace('_', '-')} must be a positive multiple of 8, got {value}")
        if self.guidance < 0 or self.retries < 0:
            raise ConfigError("--guidance and --retries must be >= 0")
        known = {s.key: s for cls in registry.all_settings() for s in registry.settings_of(cls)}
        unknown = sorted(set(self.settings) - set(known))
        if unknown:
            raise ConfigError(f"unknown method setting '{unknown[0]}' (known: {', '.join(sorted(known))})")
        object.__setattr__(self, "styles", tuple(self.styles))
        # a JSON 1 for a float setting is 1.0 (the same config hash as the flag's)
        object.__setattr__(self, "settings", {k: float(v) if known[k].type is float and type(v) is int else v
                                              for k, v in self.settings.items()})
        for other in registry.METHODS.values():  # every given setting is checked, the method's own always
            cls = other.settings_class()
            if other is method or (cls and any(s.key in self.settings for s in registry.settings_of(cls))):
                registry.build_settings(other, self.settings, self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        """From flat keys: the fields, and the method settings' keys ("styleid_gamma")."""
        names = {f.name for f in dataclasses.fields(cls)} - {"settings"}
        keys = registry.setting_keys()
        unknown = sorted(set(d) - names - keys)
        if unknown:
            raise ConfigError(f"unknown run setting '{unknown[0]}' (known: {', '.join(sorted(names | keys))})")
        return cls(**{k: v for k, v in d.items() if k in names}, settings={k: v for k, v in d.items() if k in keys})

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {**{k: v for k, v in d.items() if k != "settings"}, **d["settings"]}

    @property
    def method_entry(self) -> registry.Method:
        return registry.get(self.method)

    def method_settings(self) -> Any:
        """The method's settings dataclass (None for a method without settings)."""
        return registry.build_settings(self.method_entry, self.settings, self)

    def hashed(self) -> dict[str, Any]:
        """The settings that decide the outputs: the manifest's config hash covers exactly these (the method's
        own settings with their defaults filled in; another method's settings change nothing)."""
        d = {k: v for k, v in dataclasses.asdict(self).items() if k not in RUNTIME_ONLY and k != "settings"}
        settings = self.method_entry.settings_class()
        for s in registry.settings_of(settings) if settings else ():
            d[s.key] = self.settings.get(s.key, s.default)
        return d

    @property
    def trains(self) -> bool:
        return self.method_entry.trains

    def prompt(self, style: str, obj: str) -> str:
        """The text prompt of object word `obj` in `style` (the method's template; {instance}: the LoRA's)."""
        template = self.prompt_template or self.method_entry.prompt
        instance = instance_prompt(self.preset, style, obj) if "{instance}" in template else ""
        return template.format(obj=obj, instance=instance)


def instance_prompt(preset: str, style: str, obj: str) -> str:
    """The prompt a style LoRA of `preset` was trained with, for object word `obj`: the preset's
    caption_prefix + instance_template. A template without the object (the baseline's "style_{id}") gets
    "{obj} in " before it, as the challenge baseline generates ("Cat in style_03")."""
    from ..training.config import preset as training_preset

    cfg = training_preset(preset)
    text = cfg.caption_prefix + cfg.instance_template.format(id=style, obj=obj, caption=obj)
    has_obj = "{obj}" in cfg.instance_template or "{caption}" in cfg.instance_template
    return text if has_obj else f"{obj} in {text}"


def lora_path(style: str) -> str:
    return f"work/{style}/lora/pytorch_lora_weights.safetensors"


def content_path(style: str, prompt: str) -> str:
    return f"work/{style}/content/{prompt}.png"


def final_path(style: str, prompt: str) -> str:
    return f"{style}/{prompt}.png"


def build_graph(cfg: RunConfig, prompts: dict[str, list[str]]) -> TaskGraph:
    """Tasks for {style: [object words]}; each waits only for what it reads."""
    method = cfg.method_entry
    graph = TaskGraph()
    for style, objs in prompts.items():
        train = None
        if method.trains:
            train = graph.add(Task(f"{style}/train", "train", style, outputs=(lora_path(style),))).key
        for obj in objs:
            after = (train,) if train else ()
            if method.generates:
                out = content_path(style, obj) if method.inject else final_path(style, obj)
                after = (graph.add(Task(f"{style}/generate/{obj}", "generate", style, obj, after, (out,))).key,)
            if method.inject:
                graph.add(Task(f"{style}/inject/{obj}", "inject", style, obj, after, (final_path(style, obj),)))
    return graph.validate()


def data_path(cfg: RunConfig, style: str) -> Path:
    return Path(cfg.data) / style
