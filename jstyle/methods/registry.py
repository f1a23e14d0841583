"""The methods run_all knows, each declared once: what it trains, its prompt, its inject step, its settings.

The job plan (jstyle.jobs.plan), the stages (jstyle.jobs.stages), run_all's flags and --help, and the
method table all read `METHODS`. Adding a method is one new file in jstyle/methods/ (its algorithm, a
frozen settings dataclass and a small `inject(pipe, job)` function) plus one `Method(...)` entry below.

Per style a method runs up to three stages: train the style's LoRA -> generate content per prompt
(text-to-image) -> inject the style into it. A settings field with `metadata={"help": ...}` becomes the
run_all flag `--<prefix>-<field>` (prefix: the class name without "Config", lower case: StyleIDConfig ->
--styleid-gamma, --styleid-T); its default is the dataclass's. Nothing here imports Jittor: the method
modules are imported by name when a flag, a setting or an inject step is needed.
"""

from __future__ import annotations

import dataclasses
import importlib
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError

__all__ = ["Method", "InjectJob", "Setting", "METHODS", "get", "prefix_of", "settings_of", "all_settings",
           "setting_keys", "build_settings", "method_table", "default_candidates"]

PROMPT_FIELDS = ("obj", "instance")  # fields of Method.prompt


@dataclass(frozen=True)
class Method:
    """One style-transfer method as run_all runs it."""

    name: str
    summary: str  # one line, for --help and the method table
    trains: bool  # a LoRA per style first (the train stage, recipe: --preset)
    prompt: str  # text prompt per object word: "{obj}" alone, "{instance}" = the style LoRA's instance prompt
    generates: bool  # text-to-image content per prompt with `prompt` (the generate stage)
    inject: str | None = None  # "module:function" of the inject stage, called as fn(pipe, job) -> (image, info)
    settings: str | None = None  # "module:Class": its frozen settings dataclass
    inject_lora: bool = False  # the inject stage keeps the style's LoRA on (else it runs on the base model)
    derive: Callable[[dict[str, Any], Any], dict[str, Any]] | None = None  # (flag values, RunConfig) -> other fields
    candidate: bool = True  # in --method auto's default candidates, at its defaults (default_candidates)
    train: str | None = None  # "module:function" of the method's own train stage, fn(pipe, run, style, folder) -> info,
    # writing the style's LoRA file in folder last (None: DreamBooth-LoRA training with the run's preset)

    def __post_init__(self):
        if not self.generates and self.inject is None:
            raise ConfigError(f"method {self.name}: needs a generate stage, an inject function or both")
        try:
            self.prompt.format(**{k: "x" for k in PROMPT_FIELDS})
        except (KeyError, IndexError) as e:
            raise ConfigError(f"method {self.name}: prompt field {e} unknown; use {{obj}} or {{instance}}")

    @property
    def stages(self) -> tuple[str, ...]:
        return tuple(s for s, on in (("train", self.trains), ("generate", self.generates),
                                     ("inject", self.inject is not None)) if on)

    def inject_function(self) -> Callable[..., tuple[np.ndarray, dict[str, Any]]]:
        return _load(self.inject, f"method {self.name} inject")

    def train_function(self) -> Callable[..., dict[str, Any]] | None:
        return None if self.train is None else _load(self.train, f"method {self.name} train")

    def settings_class(self) -> type | None:
        return None if self.settings is None else _load(self.settings, f"method {self.name} settings")


@dataclass(frozen=True)
class InjectJob:
    """What an inject function gets for one (style, object word) task."""

    settings: Any  # the method's settings dataclass, filled from the run's flags
    style: str
    prompt: str  # the text prompt of this object (the LoRA's instance prompt when the method trains)
    content: np.ndarray | None  # the generated content, uint8 [size, size, 3] (None without a generate stage)
    references: list[Path]  # the style's reference images, sorted
    reference_rule: str  # which reference to use: jstyle.methods.reference.RULES
    size: int
    guidance: float
    seed: int  # the style's inference seed (the seeded 'random' reference rule's)
    noise: int | tuple[int, ...] = 0  # this image's noise seed for numpy.random.default_rng (RunConfig.noise_seed)
    obj: str = ""  # the object word as in prompt.json ("Bear"): the key of the seeded 'random' reference rule
    cache: dict[Any, Any] = field(default_factory=dict)  # lives as long as the worker (inversions, means)
    scheduler: str = "ddim"  # the run's sampler (jstyle.schedulers.SCHEDULERS) for text-to-image and SDEdit
    lora_dir: Path | None = None  # the folder of the style's trained LoRA (a method's own training files beside it)
    reference_count: str = "1"  # --references: how many references the injection uses, k or "all"
    reference_size: str = "auto"  # --reference-size: native, N pixels, or auto (the method's source reading)


@dataclass(frozen=True)
class Setting:
    """One method setting as a run_all flag: key "styleid_gamma" <-> --styleid-gamma <-> StyleIDConfig.gamma."""

    key: str
    field: str
    type: type
    default: Any
    help: str
    shown_default: str = ""  # the default as --help says it (metadata "default" where the dataclass fills it in)

    @property
    def flag(self) -> str:
        return "--" + self.key.replace("_", "-")


def _load(path: str | None, what: str) -> Any:
    module, _, name = (path or "").partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as e:
        raise ConfigError(f"{what} '{path}' cannot be loaded ({e})")


# --------------------------------------------------------------------------------------------- the methods

METHODS: dict[str, Method] = {m.name: m for m in (
    Method("dreambooth", "a DreamBooth-LoRA per style generates each prompt directly",
           trains=True, prompt="{instance}", generates=True),
    Method("sdedit", "img2img (SDEdit) from the pixel mean of the style's references, with its LoRA",
           trains=True, prompt="{instance}", generates=False, inject="jstyle.methods.sdedit:inject",
           settings="jstyle.methods.sdedit:SDEditConfig", inject_lora=True),
    # StyleID's steps, layers, AdaIN: the --styleid-variant's (jstyle.methods.styleid.VARIANTS)
    Method("styleid", "base-model content, then StyleID attention injection from a reference image",
           trains=False, prompt="{obj}", generates=True, inject="jstyle.methods.styleid:inject",
           settings="jstyle.methods.styleid:StyleIDConfig"),
    # the JStyleID seed's pipeline is this method with --prompt-template "{obj}", --steps 50, --reference random
    # and the diffusers StyleID variant (jstyle.methods.styleid_dreambooth.JSTYLEID)
    Method("styleid_dreambooth", "DreamBooth-LoRA content, then StyleID from a reference image (LoRA off)",
           trains=True, prompt="{instance}", generates=True, inject="jstyle.methods.styleid:inject",
           settings="jstyle.methods.styleid:StyleIDConfig"),
    # DiffStyle's gamma, t_boost, dt_lambda, steps: the --diffstyle-recipe's (jstyle.methods.diffstyle.RECIPES)
    Method("diffstyle", "base-model content, then DiffStyle h-space injection from a reference image",
           trains=False, prompt="{obj}", generates=True, inject="jstyle.methods.diffstyle:inject",
           settings="jstyle.methods.diffstyle:DiffStyleConfig"),
    # StyleBlend's three trainings (coarse text-encoder LoRA, <F> textual inversion, fine UNet LoRA) are its train
    # stage; its inject stage blends the two branches (jstyle.methods.styleblend)
    Method("styleblend", "StyleBlend: a coarse (text LoRA on SDEdit images) and a fine (<F> + UNet LoRA) branch "
           "blended in one batch", trains=True, prompt="{obj}", generates=False,
           inject="jstyle.methods.styleblend:inject", settings="jstyle.methods.styleblend:StyleBlendConfig",
           inject_lora=True, train="jstyle.methods.styleblend:train_stage", candidate=False,  # 3 trainings a style
           derive=lambda s, run: dict(seed=run.seed, train_steps=run.train_steps)),
    # Visual Style Prompting: no content stage, its inject stage is the text-to-image (jstyle.methods.vsp)
    Method("vsp", "text-to-image whose last up-block self-attention takes K, V from the noised reference (VSP)",
           trains=False, prompt="{obj}", generates=False, inject="jstyle.methods.vsp:inject",
           settings="jstyle.methods.vsp:VSPConfig"),
)}


def get(name: str) -> Method:
    if name not in METHODS:
        raise ConfigError(f"--method {name!r}: use one of {', '.join(METHODS)}")
    return METHODS[name]


def default_candidates() -> tuple[str, ...]:
    """--method auto's default candidates: every method and recipe whose entry says `candidate`, at its defaults."""
    from ..recipes import RECIPES

    return tuple(m.name for m in METHODS.values() if m.candidate) + tuple(r.name for r in RECIPES.values()
                                                                         if r.candidate)


# ----------------------------------------------------------------------------------------------- settings


def prefix_of(cls: type) -> str:
    """The flag prefix of a settings class: StyleIDConfig -> "styleid"."""
    return cls.__name__.removesuffix("Config").lower()


def _flag_type(hint: Any) -> Any:
    """int, float, str or bool, also from `X | None` (None: a default the dataclass fills in, e.g. per variant)."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if len(args) == 1 and type(None) in typing.get_args(hint) else hint


def settings_of(cls: type) -> list[Setting]:
    """The fields of a settings dataclass that are run_all flags (those with metadata help)."""
    hints = typing.get_type_hints(cls)
    found = []
    for f in dataclasses.fields(cls):
        if "help" not in f.metadata:
            continue
        kind = _flag_type(hints[f.name])
        if kind not in (int, float, str, bool):
            raise ConfigError(f"{cls.__name__}.{f.name}: a flag needs an int, float, str or bool field")
        found.append(Setting(f"{prefix_of(cls)}_{f.name}", f.name, kind, f.default, f.metadata["help"],
                             str(f.metadata.get("default", f.default))))
    return found


def all_settings() -> dict[type, list[Method]]:
    """Each settings class (in registry order) with the methods that use it."""
    users: dict[type, list[Method]] = {}
    for method in METHODS.values():
        cls = method.settings_class()
        if cls is not None:
            users.setdefault(cls, []).append(method)
    return users


def setting_keys() -> set[str]:
    return {s.key for cls in all_settings() for s in settings_of(cls)}


def build_settings(method: Method, values: dict[str, Any], run: Any) -> Any:
    """The method's settings dataclass from run keys ("styleid_gamma": 0.5; absent = the default) and the run."""
    cls = method.settings_class()
    if cls is None:
        return None
    flags = settings_of(cls)
    given = {s.field: values.get(s.key, s.default) for s in flags}
    try:
        return cls(**given, **(method.derive(given, run) if method.derive else {}))
    except ConfigError as e:
        raise ConfigError(f"{e} (flags: {', '.join(s.flag for s in flags)})") from None


def method_table() -> str:
    """The markdown table of the methods: stages, prompt, settings flags (README, plan's docstring)."""
    rows = ["| method | train (LoRA) | generate: prompt | inject | settings flags | what it does |",
            "|---|---|---|---|---|---|"]
    for m in METHODS.values():
        cls = m.settings_class()
        flags = ", ".join(f"`{s.flag}`" for s in settings_of(cls)) if cls else "-"
        prompt = f'`"{m.prompt}"`' if m.generates else "-"
        inject = f"`{m.inject}`" if m.inject else "-"
        rows.append(f"| `{m.name}` | {'yes' if m.trains else '-'} | {prompt} | {inject} | {flags} | {m.summary} |")
    return "\n".join(rows)
