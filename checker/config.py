"""The run configuration (frozen, built once from the CLI) and the names it is checked against."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from checker.metrics import METRICS

__all__ = [
    "METRICS",
    "METRIC_NAMES",
    "MODES",
    "FID_MODES",
    "FID_MODE_ALIASES",
    "COURSE_STYLES",
    "CLIP_R_SHIPPED",
    "CLIP_R_UNION",
    "CheckerConfig",
    "RANDOM_WEIGHTS_WARNING",
]


METRIC_NAMES: tuple[str, ...] = tuple(METRICS)
MODES = ("official", "fixed")
FID_MODES = ("pooled", "last-style", "per-style-mean")
# old name -> new name (kept working; the CLI prints a deprecation line)
FID_MODE_ALIASES = {"all-styles": "per-style-mean"}
# score_api.py get_score: ``ref_style_numbers = 15`` -> styles 00..14
COURSE_STYLES: tuple[str, ...] = tuple(f"{i:02d}" for i in range(15))
CLIP_R_SHIPPED = "shipped"  # checker/resources/clip_r_prompts.txt (the distributed 216-line file)
CLIP_R_UNION = "union"  # the lower-cased union of the scored dataset's prompt.json values

RANDOM_WEIGHTS_WARNING = (
    "RANDOM WEIGHTS: every backbone was built with random weights; these scores are MEANINGLESS "
    "(demo / test run only)."
)


@dataclass(frozen=True)
class CheckerConfig:
    """Everything a run needs. ``mode`` sets the quirk switches below unless they are given."""

    submission: Path
    data: Path
    mode: str = "official"
    fid_mode: str | None = None  # None: pooled (both modes: it is what the distributed fid_api.py ran)
    styles: tuple[str, ...] | None = None  # None: every style of the dataset
    metrics: tuple[str, ...] = METRIC_NAMES  # names in the registry evaluate() is given (default checker.metrics)
    device: str = "cpu"  # resolved device ("cpu", "cuda", "cuda:1"); the CLI resolves "auto"
    batch_size: int = 16
    random_weights: bool = False
    seed: int = 0  # only used for --random-weights
    clip_r_prompts: Path | str = CLIP_R_SHIPPED  # a word file, "shipped" (default) or "union"
    prompts: tuple[str, ...] | None = None  # only these prompts of the style are expected (None: all of prompt.json)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.fid_mode in FID_MODE_ALIASES:
            object.__setattr__(self, "fid_mode", FID_MODE_ALIASES[self.fid_mode])
        if self.fid_mode is not None and self.fid_mode not in FID_MODES:
            raise ValueError(f"fid_mode must be one of {FID_MODES}, got {self.fid_mode!r}")
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")

    @property
    def uses_union_prompts(self) -> bool:
        return isinstance(self.clip_r_prompts, str) and self.clip_r_prompts == CLIP_R_UNION

    @property
    def clip_r_candidates(self) -> str | None:
        """result.json's label of the CLIP-R candidate words (None when clip_r is not scored)."""
        if "clip_r" not in self.metrics:
            return None
        if isinstance(self.clip_r_prompts, Path):
            return str(self.clip_r_prompts)
        return "union of the dataset's prompt.json values" if self.uses_union_prompts else "shipped 215-word list"

    @property
    def official(self) -> bool:
        return self.mode == "official"

    @property
    def effective_fid_mode(self) -> str:
        """pooled (fid_api.py, what ran), last-style (fid_api_old.py's bug) or per-style-mean."""
        return self.fid_mode if self.fid_mode is not None else "pooled"

    @property
    def hist_wraps(self) -> bool:
        """Reproduce the uint8 wraps (and the dropped top HSV bin) of the original histograms."""
        return self.official

    @property
    def clip_iqa_input_scale(self) -> float:
        """Official: ToTensor()*255 fed with data_range=1.0; fixed: [0, 1] input."""
        return 255.0 if self.official else 1.0
