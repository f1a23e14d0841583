"""The one interface between a metric module and the driver (``checker.run``).

A metric is a frozen ``Metric``: its metadata (name, original key, direction), the weight slots
its backbone comes from, and four functions the driver calls in turn, with no per-metric code:

1. ``build(paths, seed) -> {name: model}`` once per process (``load_backbones``; paths None = random);
2. ``start(backbones, run) -> state`` once per run: models on the device, text embeddings, ...;
3. ``score_style(state, style_data, run) -> StyleScore`` once per style;
4. ``aggregate(style_scores, run) -> (value, problems)`` once, over all styles (default: the mean
   of the defined style values).

``checker.metrics`` lists the six of the challenge; ``evaluate(..., registry=...)`` takes any other list.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from checker.data import Problem, StyleData
from checker.score import mean_or_none

if TYPE_CHECKING:
    import torch

    from checker.config import CheckerConfig

__all__ = ["Backbones", "Run", "StyleScore", "StyleResult", "Aggregate", "Metric", "mean_of_styles"]


class Backbones:
    """The loaded models by name (``Backbones(dino=..., clip=..., clip_tokenizer=...)``, read as
    ``bb.dino``); ``sources`` says where each weight slot came from."""

    def __init__(self, sources: Mapping[str, str] | None = None, **models: Any) -> None:
        self.models: dict[str, Any] = dict(models)
        self.sources: dict[str, str] = dict(sources or {})

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["models"][name]
        except KeyError:
            raise AttributeError(f"no backbone {name!r} was loaded") from None


@dataclass(frozen=True)
class Run:
    """What a metric may read during one evaluation."""

    cfg: CheckerConfig
    device: torch.device
    styles: tuple[str, ...]


@dataclass(frozen=True)
class StyleScore:
    """One metric's numbers for one style; value None = undefined for this style (skipped)."""

    value: float | None = None
    images: Mapping[str, Sequence[Any]] = field(default_factory=dict)  # per-image key -> one value per generated image
    extra: Mapping[str, Any] = field(default_factory=dict)  # more per-style fields of result.json (hist_rgb, ...)
    problems: tuple[Problem, ...] = ()
    state: Any = None  # kept for ``aggregate`` (FID features), never written


def _plain(v: Any) -> Any:
    return v if isinstance(v, (bool, int)) else float(v)


@dataclass(frozen=True)
class StyleResult:
    """Every metric's StyleScore for one style plus what result.json says about its files
    (the decoded images themselves are not kept)."""

    name: str
    image_names: tuple[str, ...]  # generated images, in scoring order
    references: tuple[str, ...]
    generated: tuple[str, ...]
    missing_prompts: tuple[str, ...]
    scores: dict[str, StyleScore]

    @classmethod
    def of(cls, sd: StyleData, scores: dict[str, StyleScore]) -> StyleResult:
        return cls(sd.name, tuple(g.name for g in sd.gens), tuple(str(r.path) for r in sd.refs),
                   tuple(str(g.path) for g in sd.gens), tuple(sd.missing), scores)

    def as_dict(self) -> dict[str, Any]:
        """result.json's ``styles.<style>``: the metric values, their extras, images, then the files."""
        out: dict[str, Any] = {name: s.value for name, s in self.scores.items()}
        for s in self.scores.values():
            out.update(s.extra)
        images: dict[str, dict[str, Any]] = {name: {} for name in self.image_names}
        for s in self.scores.values():
            for key, values in s.images.items():
                for name, v in zip(self.image_names, values):
                    images[name][key] = _plain(v)
        out["images"] = images
        out.update(n_generated=len(self.generated), n_references=len(self.references),
                   missing_prompts=list(self.missing_prompts), references=list(self.references),
                   generated=list(self.generated))
        return out


Aggregate = tuple[float | None, Sequence[Problem]]


def mean_of_styles(scores: Sequence[StyleScore], run: Run) -> Aggregate:
    """The default aggregate: mean over the styles where the metric is defined."""
    return mean_or_none([s.value for s in scores]), ()


def _no_state(bb: Backbones, run: Run) -> None:
    return None


def _no_check(cfg: CheckerConfig) -> None:
    return None


@dataclass(frozen=True)
class Metric:
    """One metric: metadata plus the functions the driver calls (see the module docstring)."""

    name: str
    key: str  # key in the original checker's output
    higher_is_better: bool
    summary: str
    score_style: Callable[[Any, StyleData, Run], StyleScore]
    weights: tuple[str, ...] = ()  # weight slots (checker.weights.SLOTS) that ``build`` reads
    build: Callable[[Mapping[str, Path | None], int], dict[str, Any]] | None = None
    start: Callable[[Backbones, Run], Any] = _no_state
    aggregate: Callable[[Sequence[StyleScore], Run], Aggregate] = mean_of_styles
    check: Callable[[CheckerConfig], None] = _no_check  # input checks before any model is loaded
