"""What a run does: its settings (RunConfig) and the task graph they imply, per style and prompt.

Stages per style: train its LoRA -> generate content per prompt -> inject the style -> <out>/<style>/<Prompt>.png.
With lora_scope "joint" one LoRA is trained on every style's references together (each style with its own token,
"style_NN"), once per run, and every style's tasks wait for it.
Which stages a method runs, its prompt and its settings come from jstyle.methods.registry (`method_table()`
prints the table). The "{instance}" prompt is the style LoRA's instance prompt of the training preset
(jstyle.training.config), so generation asks for what training taught.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, InputError
from ..methods import registry
from .graph import Task, TaskGraph

__all__ = ["RunConfig", "build_graph", "instance_prompt", "scheduler_name", "lora_path", "content_path",
           "final_path", "LORA_SCOPES", "JOINT"]

AUTO = "auto"  # --method auto: per style, the candidate the checker's scorer picks (jstyle.jobs.auto)
SELECT_BY = ("final", "dino", "hist", "lpips", "fid", "clip_iqa", "clip_r")  # what --method auto picks by
# --method auto's settings: left out of the config hash of every other method (its runs resume as before)
AUTO_FIELDS = ("candidates", "screen_prompts", "select_by", "score_device", "random_weights", "checker_weights")
REFERENCE_RULES = ("first", "nearest", "random")  # jstyle.methods.reference.RULES
LORA_SCOPES = ("style", "joint")  # one LoRA per style, or one for all styles (trained once per run)
JOINT = "joint"  # the joint LoRA's name in task keys and paths: work/joint/lora/
DTYPES = ("auto", "float32", "float16")  # auto: float16 on CUDA (LoRA training in fp16 mixed precision), else float32
# settings that do not change any output (left out of the manifest's config hash); a recipe's name is only a label:
# the hash covers the settings it resolves to, so a recipe and the same settings given as flags resume each other
RUNTIME_ONLY = ("out", "devices", "backend", "address", "retries", "progress", "gradient_checkpointing", "recipe",
                "score_device", "shared_work")
# LoRATrainConfig fields the run sets itself (train_settings may not): the flag that sets each
RUN_OWNED_TRAIN = {"style_dir": "--data", "style_dirs": "--data and --lora-scope joint", "output_dir": "--out",
                   "resolution": "--train-size", "seed": "--seed", "max_train_steps": "--train-steps",
                   "mixed_precision": "--dtype", "progress": "--no-progress",
                   "gradient_checkpointing": "--gradient-checkpointing", "resume": "(a rerun resumes by itself)",
                   "checkpointing_steps": "(none)", "checkpoints_total_limit": "(none)",
                   "timestep_sampling": "--timestep-sampling"}


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
    recipe: str | None = None  # the jstyle.recipes entry these settings came from (a label, not hashed)
    preset: str = "baseline"  # LoRA training preset: jstyle.training.PRESETS
    train_settings: dict[str, Any] = field(default_factory=dict)  # LoRATrainConfig fields over the preset
    lora_scope: str = "style"  # LORA_SCOPES: a LoRA per style, or one LoRA for all styles
    timestep_sampling: str = "uniform"  # LoRA training timesteps: uniform | style-friendly (jstyle.training.timesteps)
    dtype: str = "auto"  # the base model's dtype in every stage (DTYPES)
    size: int = 512  # generation size in pixels (outputs are always saved at 512x512)
    steps: int = 25  # text-to-image steps
    prompt_template: str | None = None  # the content prompt: "{obj}", "{instance}" (the LoRA's); None = the method's
    guidance: float = 7.5
    scheduler: str = "ddim"  # text-to-image and SDEdit sampler: jstyle.schedulers.SCHEDULERS, or "model"
    seed: int = 0
    seed_per_style: bool = False  # inference seed = seed + the style's number (training keeps seed)
    shared_noise: bool = False  # every image of a style draws its noise from the inference seed alone
    drop_to_out_at_inference: bool = False  # the style LoRA's to_out.0 layers are trained but not applied
    train_steps: int | None = None  # None = the preset's
    train_size: int | None = None  # None = size
    gradient_checkpointing: bool = False  # LoRA training: recompute UNet blocks (less memory, same result)
    reference: str = "first"  # which reference image the injection uses: first | nearest | random
    references: str = "1"  # how many reference images the injection pools: k or all (StyleID, VSP)
    reference_size: str = "auto"  # references read at native size, N px, or auto (the method's source reading)
    devices: str = "auto"
    backend: str = "local"
    address: str | None = None
    retries: int = 1
    progress: bool = True
    # --method auto (jstyle.jobs.auto): candidates ("NAME[:key=value,...]", a method or a recipe; () = the registry's
    # default list), prompts screened per style, what picks, the scorer's device and backbones
    candidates: tuple[str, ...] = ()
    screen_prompts: int = 5
    select_by: str = "final"
    score_device: str = "auto"
    random_weights: bool = False  # the scorer's backbones at random: only hist (no backbone) is meaningful
    checker_weights: str | None = None  # the checker's weights folder (default $JSTYLE_CHECKER_WEIGHTS)
    shared_work: bool = False  # work files named by their settings (auto's candidates share LoRAs and contents)
    settings: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        method = None if self.method == AUTO else registry.get(self.method)
        if self.reference not in REFERENCE_RULES:
            raise ConfigError(f"--reference {self.reference!r}: use one of {', '.join(REFERENCE_RULES)}")
        from ..methods.reference import parse_count, parse_size

        object.__setattr__(self, "references", str(self.references).strip().lower())
        object.__setattr__(self, "reference_size", str(self.reference_size).strip().lower())
        try:
            parse_count(self.references)
            parse_size(self.reference_size, None)
        except InputError as e:
            raise ConfigError(str(e)) from None
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
        if self.dtype not in DTYPES:
            raise ConfigError(f"--dtype {self.dtype!r}: use one of {', '.join(DTYPES)}")
        if self.lora_scope not in LORA_SCOPES:
            raise ConfigError(f"--lora-scope {self.lora_scope!r}: use one of {', '.join(LORA_SCOPES)}")
        if self.lora_scope == JOINT and (method is None or method.train):
            raise ConfigError(f"--lora-scope joint: not with --method {self.method} (one LoRA a style there); "
                              "use --lora-scope style")
        from ..training.timesteps import TIMESTEP_SAMPLINGS

        if self.timestep_sampling not in TIMESTEP_SAMPLINGS:
            raise ConfigError(f"--timestep-sampling {self.timestep_sampling!r}: use one of "
                              f"{', '.join(TIMESTEP_SAMPLINGS)}")
        if not isinstance(self.train_settings, dict):
            raise ConfigError("train_settings: a JSON object of LoRA training settings ({\"rank\": 32, ...})")
        owned = sorted(set(self.train_settings) & set(RUN_OWNED_TRAIN))
        if owned:
            raise ConfigError(f"train_settings: '{owned[0]}' is the run's own; set it with {RUN_OWNED_TRAIN[owned[0]]}")
        from ..schedulers import SCHEDULERS

        if self.scheduler not in (*SCHEDULERS, "model"):
            raise ConfigError(f"--scheduler {self.scheduler!r}: use one of {', '.join(SCHEDULERS)}, or model "
                              "(the model folder's scheduler_config.json class)")
        known = {s.key: s for cls in registry.all_settings() for s in registry.settings_of(cls)}
        unknown = sorted(set(self.settings) - set(known))
        if unknown:
            raise ConfigError(f"unknown method setting '{unknown[0]}' (known: {', '.join(sorted(known))})")
        if self.method == AUTO:
            if self.select_by not in SELECT_BY:
                raise ConfigError(f"--select-by {self.select_by!r}: use one of {', '.join(SELECT_BY)}")
            if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.score_device):
                raise ConfigError(f"--score-device {self.score_device!r}: use auto, cpu, cuda or cuda:N")
            if self.random_weights and self.select_by != "hist":
                raise ConfigError(f"--select-by {self.select_by} with --random-weights: random backbones make every "
                                  "metric but hist (which has none) meaningless; use --select-by hist")
            if self.screen_prompts < 1 or (self.screen_prompts < 2 and self.select_by in ("final", "fid")):
                raise ConfigError(f"--screen-prompts {self.screen_prompts}: at least 1, and 2 to select by "
                                  f"{self.select_by} (FID needs 2 images)")
        object.__setattr__(self, "styles", tuple(self.styles))
        object.__setattr__(self, "candidates", tuple(self.candidates))
        # a JSON list (--config) is the tuple a recipe gives (target lists): the same settings, the same hash
        object.__setattr__(self, "train_settings", {k: tuple(v) if isinstance(v, list) else v
                                                    for k, v in self.train_settings.items()})
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

    @property
    def auto(self) -> bool:
        return self.method == AUTO

    def method_settings(self) -> Any:
        """The method's settings dataclass (None for a method without settings)."""
        return registry.build_settings(self.method_entry, self.settings, self)

    def hashed(self) -> dict[str, Any]:
        """The settings that decide the outputs: the manifest's config hash covers exactly these (the method's
        own settings with their defaults filled in; another method's settings change nothing)."""
        d = {k: v for k, v in dataclasses.asdict(self).items() if k not in RUNTIME_ONLY and k != "settings"}
        if self.auto:  # what the candidates run: their specs over the run's settings (jstyle.jobs.auto)
            return {**d, "candidates": list(self.candidates or registry.default_candidates()),
                    "settings": dict(sorted(self.settings.items()))}
        d = {k: v for k, v in d.items() if k not in AUTO_FIELDS}
        settings = self.method_entry.settings_class()
        for s in registry.settings_of(settings) if settings else ():
            d[s.key] = self.settings.get(s.key, s.default)
        return d

    @property
    def trains(self) -> bool:
        return self.method_entry.trains

    def lora_file(self, style: str) -> str:
        """The LoRA this run's tasks train and read for `style`: its own or the joint one (lora_name; shared_work:
        named by its training settings)."""
        return lora_path(self.lora_name(style), _short_hash(self.lora_key()) if self.shared_work else None)

    def lora_key(self) -> dict[str, Any]:
        """What decides a style's LoRA: the preset, the training settings and the base dtype (and, for a method that
        trains its own way, that method and its settings)."""
        own = {"method_train": self.method_entry.train, "settings": self.method_settings()} \
            if self.method_entry.train else {}
        return {"preset": self.preset, "train": self.train_overrides(), "dtype": self.dtype, "model": self.model, **own}

    def content_file(self, style: str, obj: str) -> str:
        """The content image of `obj` this run's tasks generate and read (shared_work: named by its settings)."""
        if not self.shared_work:
            return content_path(style, obj)
        m = self.method_entry
        template = self.prompt_template or m.prompt
        key = {"template": template, "lora": self.lora_key() if m.trains else None, "skip": self.lora_skip(),
               "steps": self.steps, "guidance": self.guidance, "size": self.size, "scheduler": self.scheduler,
               "seed": self.seed, "seed_per_style": self.seed_per_style, "shared_noise": self.shared_noise,
               "dtype": self.dtype, "model": self.model,
               "instance": (self.preset, self.train_settings) if "{instance}" in template else None}
        return content_path(style, obj, _short_hash(key))

    def prompt(self, style: str, obj: str) -> str:
        """The text prompt of object word `obj` in `style` (the method's template; {instance}: the LoRA's)."""
        template = self.prompt_template or self.method_entry.prompt
        instance = instance_prompt(self.preset, style, obj, self.train_settings) if "{instance}" in template else ""
        return template.format(obj=obj, instance=instance)

    def train_overrides(self) -> dict[str, Any]:
        """The LoRATrainConfig fields this run gives over its preset (not the per-style paths)."""
        d = {**self.train_settings, "resolution": self.train_size or self.size, "seed": self.seed,
             "gradient_checkpointing": self.gradient_checkpointing, "timestep_sampling": self.timestep_sampling}
        if self.train_steps is not None:
            d["max_train_steps"] = self.train_steps
        return d

    def inference_seed(self, style: str) -> int:
        """The seed of a style's generate and inject tasks: seed, or seed + the style's number (seed_per_style)."""
        if not self.seed_per_style:
            return self.seed
        if not style.isdigit():
            raise ConfigError(f"--seed-per-style adds the style's number to the seed; style '{style}' is not a number")
        return self.seed + int(style)

    def noise_seed(self, style: str, obj: str) -> int | tuple[int, ...]:
        """The seed of one image's noise (start latents, VAE samples, stochastic steps): its own per (inference
        seed, style, object word), so no two images share noise and adding a style or a prompt changes no other
        image; with shared_noise the inference seed itself (every prompt of a style starts from one latent)."""
        from ..data import NOISE_STREAM, image_key

        seed = self.inference_seed(style)
        return seed if self.shared_noise else image_key(seed, style, obj, NOISE_STREAM)

    def lora_name(self, style: str) -> str:
        """The LoRA `style` is generated with: its own, or the run's joint one (lora_scope "joint")."""
        return JOINT if self.lora_scope == JOINT else style

    def lora_skip(self) -> tuple[str, ...]:
        """Targets of the style LoRA left out at inference (drop_to_out_at_inference: to_out.0)."""
        return ("to_out.0",) if self.drop_to_out_at_inference else ()


def scheduler_name(name: str, scheduler_config: dict[str, Any]) -> str:
    """A jstyle scheduler name; "model" = the one the model's scheduler_config.json names (`_class_name`)."""
    if name != "model":
        return name
    from ..schedulers import SCHEDULERS

    by_class = {cls.__name__: short for short, cls in SCHEDULERS.items()}
    named = scheduler_config.get("_class_name")
    if named not in by_class:
        raise ConfigError(f"--scheduler model: the model's scheduler_config.json names {named!r}, which jstyle lacks; "
                          f"pass --scheduler {' | '.join(SCHEDULERS)}")
    return by_class[named]


def instance_prompt(preset: str, style: str, obj: str, train_settings: dict[str, Any] | None = None) -> str:
    """The prompt a style LoRA of `preset` (with `train_settings` over it) was trained with, for object word
    `obj`: caption_prefix + instance_template. A template without the object (the baseline's "style_{id}") gets
    "{obj} in " before it, as the challenge baseline generates ("Cat in style_03")."""
    from ..training.config import preset as training_preset

    cfg = training_preset(preset, **(train_settings or {}))
    text = cfg.caption_prefix + cfg.instance_template.format(id=style, obj=obj, caption=obj)
    has_obj = "{obj}" in cfg.instance_template or "{caption}" in cfg.instance_template
    return text if has_obj else f"{obj} in {text}"


def _short_hash(obj: Any) -> str:
    import hashlib
    import json

    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:10]


def lora_path(style: str, key: str | None = None) -> str:
    return f"work/{style}/lora{'-' + key if key else ''}/pytorch_lora_weights.safetensors"


def content_path(style: str, prompt: str, key: str | None = None) -> str:
    return f"work/{style}/content{'-' + key if key else ''}/{prompt}.png"


def final_path(style: str, prompt: str) -> str:
    return f"{style}/{prompt}.png"


def build_graph(cfg: RunConfig, prompts: dict[str, list[str]]) -> TaskGraph:
    """Tasks for {style: [object words]}; each waits only for what it reads (--method auto:
    jstyle.jobs.auto.build_auto_graph)."""
    if cfg.auto:
        raise ConfigError("--method auto: its graph is jstyle.jobs.auto.build_auto_graph")
    method = cfg.method_entry
    graph = TaskGraph()
    joint = method.trains and cfg.lora_scope == JOINT
    if joint:  # one train task on every style's references
        graph.add(Task(f"{JOINT}/train", "train", JOINT, outputs=(lora_path(JOINT),)))
    for style, objs in prompts.items():
        train = None
        if joint:
            train = f"{JOINT}/train"
        elif method.trains:
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
