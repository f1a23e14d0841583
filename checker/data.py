"""Finding styles, prompts and images on disk; every oddity becomes a listed Problem, not a crash.

Layout: ``<data>/<style>/images/*`` (references), ``<data>/<style>/prompt.json``,
``<submission>/<style>/<Prompt>.png`` (generated). Styles and files are taken in sorted order.
Hidden files (``.DS_Store``, ``._x.png``) and non-image suffixes (``.txt``) are ignored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from checker.errors import CheckerError
from checker.images import IMAGE_SUFFIXES, ImageDecodeError, decode_rgb

__all__ = [
    "Problem",
    "ImageItem",
    "StyleData",
    "list_images",
    "read_prompts",
    "discover_styles",
    "candidate_prompts",
    "read_word_file",
    "SHIPPED_PROMPTS",
    "load_style",
]

EXPECTED_SIZE = (512, 512)


@dataclass(frozen=True)
class Problem:
    """Something the report names: kind is one of unreadable, missing_prompt, missing_style,
    empty_style, no_references, unexpected_style, extra_image, size, no_prompts."""

    kind: str
    path: str
    message: str


@dataclass
class ImageItem:
    path: Path
    rgb: np.ndarray  # (H, W, 3) uint8

    @property
    def name(self) -> str:
        return self.path.name


@dataclass
class StyleData:
    name: str
    refs: list[ImageItem] = field(default_factory=list)
    gens: list[ImageItem] = field(default_factory=list)
    prompts: list[str] = field(default_factory=list)  # prompt.json values, in key order
    missing: list[str] = field(default_factory=list)  # prompts with no readable generated image
    problems: list[Problem] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)

    @property
    def usable(self) -> bool:
        """Image-vs-reference metrics need at least one generated and one reference image."""
        return bool(self.gens) and bool(self.refs)


def list_images(folder: Path) -> tuple[list[Path], list[Path]]:
    """(image files, ignored files) of ``folder``, sorted by name; hidden files are ignored."""
    images, ignored = [], []
    for p in sorted(folder.iterdir(), key=lambda q: q.name):
        if p.name.startswith(".") or not p.is_file() or p.suffix.lower() not in IMAGE_SUFFIXES:
            ignored.append(p)
        else:
            images.append(p)
    return images, ignored


def read_prompts(path: Path) -> list[str]:
    """prompt.json ``{"0": "Dolphin", ...}`` -> values ordered by integer key."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckerError(f"{path}: not a readable JSON prompt file ({exc}); fix or remove it") from None
    if isinstance(raw, list):
        items = list(enumerate(raw))
    elif isinstance(raw, dict):
        try:
            items = sorted(((int(k), v) for k, v in raw.items()), key=lambda kv: kv[0])
        except ValueError:
            items = sorted(raw.items())
    else:
        raise CheckerError(f"{path}: expected an object like {{\"0\": \"Dolphin\"}}, got {type(raw).__name__}")
    bad = [v for _, v in items if not isinstance(v, str) or not v.strip()]
    if bad:
        raise CheckerError(f"{path}: every prompt must be a non-empty string, got {bad[:3]}")
    return [v.strip() for _, v in items]


def _is_style_dir(p: Path) -> bool:
    return p.is_dir() and not p.name.startswith(".") and ((p / "images").is_dir() or (p / "prompt.json").is_file())


def discover_styles(data: Path, wanted: tuple[str, ...] | None = None, flag: str = "--styles") -> list[str]:
    """Sorted style names of the dataset (folders with images/ or prompt.json), optionally filtered."""
    if not data.is_dir():
        raise CheckerError(f"--data {data}: not a folder; expected <data>/<style>/images and prompt.json")
    styles = sorted(p.name for p in data.iterdir() if _is_style_dir(p))
    if not styles:
        raise CheckerError(f"--data {data}: no style folders (<style>/images/ or <style>/prompt.json) found")
    if wanted is None:
        return styles
    unknown = [s for s in wanted if s not in styles]
    if unknown:
        raise CheckerError(f"{flag} {','.join(unknown)}: not in {data} (has {','.join(styles)}); "
                           "pick styles it has with --styles")
    return [s for s in styles if s in set(wanted)]


SHIPPED_PROMPTS = Path(__file__).resolve().parent / "resources" / "clip_r_prompts.txt"


def read_word_file(path: Path) -> list[str]:
    """score_api.py get_clip_r_score: every line ``strip().lower()``; blank lines dropped."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckerError(f"--clip-r-prompts {path}: cannot read ({type(exc).__name__}); "
                           "give a UTF-8 text file with one word per line") from None
    words = [ln.strip().lower() for ln in text.splitlines() if ln.strip()]
    if not words:
        raise CheckerError(f"--clip-r-prompts {path}: no words; give one candidate word per line")
    return words


def candidate_prompts(data: Path, prompts: Path | str = "shipped") -> list[str]:
    """CLIP-R candidate words, sorted and de-duplicated (the original's ``set``; the CLIP tokenizer
    lower-cases, so case variants are the same text). ``"shipped"``: the distributed
    clip_r_prompts.txt (215 words) in checker/resources; ``"union"``: the lower-cased union of
    every style's prompt.json values; a Path: that file, one word per line."""
    if isinstance(prompts, Path):
        if not prompts.is_file():
            raise CheckerError(f"--clip-r-prompts {prompts}: file not found; give a word file, 'shipped' or 'union'")
        return sorted(set(read_word_file(prompts)))
    if prompts == "shipped":
        return sorted(set(read_word_file(SHIPPED_PROMPTS)))
    if prompts != "union":
        raise CheckerError(f"--clip-r-prompts {prompts}: expected a word file, 'shipped' or 'union'")
    words: list[str] = []
    for style in discover_styles(data):
        pj = data / style / "prompt.json"
        if pj.is_file():
            words += read_prompts(pj)
    return sorted({w.lower() for w in words})


def _read_items(paths: list[Path], problems: list[Problem]) -> list[ImageItem]:
    items = []
    for p in paths:
        try:
            items.append(ImageItem(p, decode_rgb(p)))
        except ImageDecodeError as exc:
            problems.append(Problem("unreadable", str(p), f"skipped: {exc}"))
    return items


def load_style(data: Path, submission: Path, style: str, only: tuple[str, ...] | None = None) -> StyleData:
    """Read one style's references, prompts and generated images; collect problems. `only`: the prompts
    expected (a subset of prompt.json, e.g. a screening subset); the others are neither scored nor missing."""
    sd = StyleData(style)
    ref_dir, prompt_file, gen_dir = data / style / "images", data / style / "prompt.json", submission / style
    if prompt_file.is_file():
        sd.prompts = read_prompts(prompt_file)
    else:
        sd.problems.append(Problem("no_prompts", str(prompt_file), "no prompt.json: missing images cannot be detected"))
    if only is not None:
        unknown = sorted(set(only) - set(sd.prompts))
        if unknown:
            raise CheckerError(f"--prompts {unknown[0]}: not a prompt of {prompt_file}; give words of its prompt.json")
        sd.prompts = [p for p in sd.prompts if p in set(only)]
    if ref_dir.is_dir():
        ref_paths, ignored = list_images(ref_dir)
        sd.ignored += [str(p) for p in ignored]
        sd.refs = _read_items(ref_paths, sd.problems)
    if not sd.refs:
        sd.problems.append(Problem("no_references", str(ref_dir), "no readable reference image: style skipped"))
    if not gen_dir.is_dir():
        sd.problems.append(Problem("missing_style", str(gen_dir), "style folder missing from the submission"))
    else:
        gen_paths, ignored = list_images(gen_dir)
        if only is not None:  # the other prompts' images are not scored
            wanted = {p.lower() for p in sd.prompts}
            ignored += [p for p in gen_paths if p.stem.lower() not in wanted]
            gen_paths = [p for p in gen_paths if p.stem.lower() in wanted]
        sd.ignored += [str(p) for p in ignored]
        sd.gens = _read_items(gen_paths, sd.problems)
        if not gen_paths:
            sd.problems.append(Problem("empty_style", str(gen_dir), "no image files in this style folder"))
    have = {g.path.stem.lower() for g in sd.gens}
    sd.missing = [p for p in sd.prompts if p.lower() not in have]
    for p in sd.missing:
        sd.problems.append(Problem("missing_prompt", str(gen_dir / f"{p}.png"),
                                   "no readable image: counts as a CLIP-R miss"))
    wanted = {p.lower() for p in sd.prompts}
    for g in sd.gens:
        if sd.prompts and g.path.stem.lower() not in wanted:
            sd.problems.append(Problem("extra_image", str(g.path),
                                       "file name is not a prompt of this style; still scored"))
        if g.rgb.shape[:2] != EXPECTED_SIZE:
            h, w = g.rgb.shape[:2]
            sd.problems.append(Problem("size", str(g.path), f"{w}x{h}, expected 512x512; scored as the original would"))
    return sd
