"""Evaluation driver: load each backbone once, walk the styles, compute the six metrics.

``load_backbones`` builds the models a config needs (real weights from local paths, or random);
``evaluate`` returns the result dict written to result.json.
"""

from __future__ import annotations

import platform
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from checker import __version__
from checker.config import COURSE_STYLES, METRICS, RANDOM_WEIGHTS_WARNING, CheckerConfig
from checker.data import Problem, StyleData, candidate_prompts, discover_styles, list_images, load_style
from checker.errors import CheckerError
from checker.score import aggregate_fid, final_from, mean_or_none

__all__ = ["Backbones", "load_backbones", "check_inputs", "evaluate"]

Log = Callable[[str], None]


@dataclass
class Backbones:
    """The loaded models, keyed by metric; ``sources`` says where each came from."""

    dino: Any = None
    lpips: Any = None
    inception: Any = None
    clip_rn50: Any = None
    clip: Any = None
    clip_tokenizer: Any = None
    sources: dict[str, str] = field(default_factory=dict)


def _slots_for(metrics: tuple[str, ...]) -> list[str]:
    slots = [METRICS[m].backbone for m in metrics if METRICS[m].backbone]
    return slots + (["lpips_heads"] if "lpips" in metrics else [])


def load_backbones(
    cfg: CheckerConfig,
    weights_dir: Path | None = None,
    overrides: Mapping[str, Path | None] | None = None,
    log: Log = lambda s: None,
) -> Backbones:
    """Build every backbone ``cfg.metrics`` needs, once. Missing weights: one CheckerError."""
    from checker.weights import resolve_weights

    slots = _slots_for(cfg.metrics)
    if cfg.random_weights:
        paths: dict[str, Path | None] = {s: None for s in slots}
        if "lpips_heads" in slots:  # the heads ship in the wheel: real even in random mode
            paths["lpips_heads"] = resolve_weights(["lpips_heads"], weights_dir, overrides)["lpips_heads"]
    else:
        paths = resolve_weights(slots, weights_dir, overrides)
    bb = Backbones()
    for slot in slots:
        t0 = time.perf_counter()
        path = paths.get(slot)
        if slot == "dino":
            from checker.dino import build_dino

            bb.dino = build_dino(path, cfg.seed)
        elif slot == "squeezenet":
            from checker.lpips import build_lpips

            bb.lpips = build_lpips(path, paths.get("lpips_heads"), cfg.seed)
        elif slot == "inception":
            from checker.fid import build_inception

            bb.inception = build_inception(path, cfg.seed)
        elif slot == "clip_rn50":
            from checker.clip_iqa import build_clip_rn50

            bb.clip_rn50 = build_clip_rn50(path, cfg.seed)
        elif slot == "clip":
            from checker.clip_r import build_clip, build_tokenizer

            bb.clip = build_clip(path, cfg.seed)
            bb.clip_tokenizer = build_tokenizer(path)
        if slot != "lpips_heads":
            bb.sources[slot] = "random" if cfg.random_weights else str(path)
            log(f"loaded {slot} from {bb.sources[slot]} in {time.perf_counter() - t0:.1f}s")
    return bb


class _Timer(dict):
    def add(self, key: str, t0: float) -> None:
        self[key] = self.get(key, 0.0) + time.perf_counter() - t0


def _style_metrics(sd: StyleData, cfg: CheckerConfig, m: dict[str, Any], timer: _Timer) -> dict[str, Any]:
    """Per-style and per-image numbers for one style (None where a metric is undefined)."""
    gens, refs = [g.rgb for g in sd.gens], [r.rgb for r in sd.refs]
    out: dict[str, Any] = {k: None for k in cfg.metrics}
    per_image: dict[str, dict[str, Any]] = {g.name: {} for g in sd.gens}
    names = [g.name for g in sd.gens]

    def put(key: str, values: Any) -> None:
        for name, v in zip(names, values):
            per_image[name][key] = float(v) if not isinstance(v, (bool, int)) else v

    if "dino" in cfg.metrics and sd.usable:
        from checker.dino import cosine_matrix

        t0 = time.perf_counter()
        cos = cosine_matrix(m["dino"](gens), m["dino"](refs))
        put("dino", cos.mean(1).tolist())
        out["dino"] = float(cos.mean())  # mean over g of mean over r
        timer.add("dino", t0)
    if "hist" in cfg.metrics and sd.usable:
        from checker.hist import hist_style_scores, histograms

        t0 = time.perf_counter()
        rgb, hsv = hist_style_scores([histograms(x, cfg.hist_wraps) for x in gens],
                                     [histograms(x, cfg.hist_wraps) for x in refs])
        put("hist_rgb", rgb)
        put("hist_hsv", hsv)
        put("hist", (rgb + hsv) / 2)
        out.update(hist=float((rgb.mean() + hsv.mean()) / 2), hist_rgb=float(rgb.mean()), hist_hsv=float(hsv.mean()))
        timer.add("hist", t0)
    if "lpips" in cfg.metrics and sd.usable:
        from checker.lpips import lpips_input, pair_distances

        t0 = time.perf_counter()
        net, dev, bs = m["lpips"], m["device"], cfg.batch_size

        def feats(xs: list[np.ndarray]) -> list[torch.Tensor]:
            chunks = [net.layer_features(torch.from_numpy(np.stack([lpips_input(x) for x in xs[i : i + bs]])).to(dev))
                      for i in range(0, len(xs), bs)]
            return [torch.cat(layer) for layer in zip(*chunks)]

        d = pair_distances(net, feats(gens), feats(refs)).cpu()
        put("lpips", d.mean(1).tolist())
        out["lpips"] = float(d.double().mean())  # mean over all (g, r) pairs
        timer.add("lpips", t0)
    if "fid" in cfg.metrics and sd.usable:
        out["fid"] = _style_fid(sd, m, cfg, timer)
    if "clip_iqa" in cfg.metrics and gens:
        t0 = time.perf_counter()
        p = m["clip_iqa"](gens)
        put("clip_iqa", p.tolist())
        out["clip_iqa"] = float(p.double().mean())
        timer.add("clip_iqa", t0)
    if "clip_r" in cfg.metrics:
        t0 = time.perf_counter()
        ranks = m["clip_r"].ranks(gens, [g.path.stem.lower() for g in sd.gens], m["clip_r_prompts"]) if gens else []
        from checker.clip_r import TOP_K

        put("clip_r_rank", ranks)
        put("clip_r_hit", [r < TOP_K for r in ranks])
        hits, total = sum(r < TOP_K for r in ranks), len(ranks) + len(sd.missing)
        out.update(clip_r=hits / total if total else None, clip_r_hits=hits, clip_r_total=total)
        timer.add("clip_r", t0)
    out["images"] = per_image
    return out


def _style_fid(sd: StyleData, m: dict[str, Any], cfg: CheckerConfig, timer: _Timer) -> float | None:
    """Per-style FID; the features are kept in ``m["fid_feats"]`` for the pooled FID."""
    from checker.fid import fid_from_features, inception_features

    t0 = time.perf_counter()
    net, dev, bs = m["inception"], m["device"], cfg.batch_size
    real = inception_features(net, [r.rgb for r in sd.refs], dev, bs)
    fake = inception_features(net, [g.rgb for g in sd.gens], dev, bs)
    m["fid_feats"].append((real, fake))
    m["fid_shapes"] |= {x.rgb.shape for x in (*sd.refs, *sd.gens)}
    fid = fid_from_features(real, fake)
    if fid is None:
        sd.problems.append(Problem("fid_undefined", sd.name,
                                   "per-style FID needs >= 2 generated and >= 2 reference images"))
    timer.add("fid", t0)
    return fid


def _mixed_size_problem(shapes: set[tuple[int, ...]]) -> list[Problem]:
    """fid_api.py torch.stacks the pooled images; a mix of sizes would crash it: say so."""
    if len(shapes) < 2:
        return []
    sizes = ", ".join(f"{s[1]}x{s[0]}" for s in sorted(shapes))
    return [Problem("fid_mixed_sizes", "fid", f"images of sizes {sizes}: the original's torch.stack would fail; "
                    "jstyle resizes each image to 299x299 on its own (the features a stack of equal sizes gives)")]


def _submission_stems(submission: Path, styles: list[str]) -> set[str]:
    stems: set[str] = set()
    for s in styles:
        if (submission / s).is_dir():
            stems |= {p.stem.lower() for p in list_images(submission / s)[0]}
    return stems


def _environment(device: torch.device) -> dict[str, Any]:
    env: dict[str, Any] = {"device": str(device), "torch": torch.__version__, "python": platform.python_version(),
                           "threads": torch.get_num_threads(), "argv": sys.argv[1:]}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["cuda_peak_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    return env


def _candidates_label(cfg: CheckerConfig) -> str:
    if isinstance(cfg.clip_r_prompts, Path):
        return str(cfg.clip_r_prompts)
    return "union of the dataset's prompt.json values" if cfg.uses_union_prompts else "shipped 215-word list"


def check_inputs(cfg: CheckerConfig) -> list[str]:
    """Fail fast (before any model is loaded) on a bad --submission / --data / --styles."""
    if not cfg.submission.is_dir():
        raise CheckerError(f"--submission {cfg.submission}: not a folder; expected <submission>/<style>/<Prompt>.png")
    flag = "--course-styles" if cfg.styles == COURSE_STYLES else "--styles"
    styles = discover_styles(cfg.data, cfg.styles, flag)
    if "clip_r" in cfg.metrics:
        candidate_prompts(cfg.data, cfg.clip_r_prompts)
    return styles


def evaluate(cfg: CheckerConfig, bb: Backbones, log: Log = lambda s: None) -> dict[str, Any]:
    """Run every metric of ``cfg`` with the loaded backbones; returns the result dict."""
    check_inputs(cfg)
    t_start = time.perf_counter()
    device = torch.device(cfg.device)
    styles, all_styles = discover_styles(cfg.data, cfg.styles), set(discover_styles(cfg.data))
    problems: list[Problem] = [
        Problem("unexpected_style", str(p), "not a style of the dataset: ignored")
        for p in sorted(cfg.submission.iterdir())
        if p.is_dir() and not p.name.startswith(".") and p.name not in all_styles
    ]
    m: dict[str, Any] = {"device": device}
    timer = _Timer()
    if "dino" in cfg.metrics:
        from checker.dino import DinoEmbedder

        m["dino"] = DinoEmbedder(bb.dino, device, cfg.batch_size)
    if "lpips" in cfg.metrics:
        m["lpips"] = bb.lpips.to(device)
    if "fid" in cfg.metrics:
        m["inception"] = bb.inception.to(device)
        m["fid_feats"], m["fid_shapes"] = [], set()
    if "clip_iqa" in cfg.metrics:
        from checker.clip_iqa import ClipIqa

        m["clip_iqa"] = ClipIqa(bb.clip_rn50, device, cfg.clip_iqa_input_scale)
    if "clip_r" in cfg.metrics:
        from checker.clip_r import ClipR

        t0 = time.perf_counter()
        prompts = candidate_prompts(cfg.data, cfg.clip_r_prompts)
        m["clip_r_prompts"] = prompts
        m["clip_r"] = ClipR(bb.clip, bb.clip_tokenizer, device, cfg.batch_size)
        m["clip_r"].set_words(prompts + sorted(_submission_stems(cfg.submission, styles)))
        timer.add("clip_r", t0)

    per_style: dict[str, dict[str, Any]] = {}
    ignored: list[str] = []
    for style in styles:
        t0 = time.perf_counter()
        sd = load_style(cfg.data, cfg.submission, style)
        timer.add("load", t0)
        res = _style_metrics(sd, cfg, m, timer)
        res.update(n_generated=len(sd.gens), n_references=len(sd.refs), missing_prompts=sd.missing,
                   references=[str(r.path) for r in sd.refs], generated=[str(g.path) for g in sd.gens])
        per_style[style] = res
        problems += sd.problems
        ignored += sd.ignored
        shown = " ".join(f"{k}={res[k]:.4f}" for k in cfg.metrics if isinstance(res.get(k), float))
        log(f"style {style}: {len(sd.gens)} generated, {len(sd.refs)} references  {shown}  "
            f"[{time.perf_counter() - t0:.1f}s]")

    metrics: dict[str, float | None] = {}
    for k in cfg.metrics:
        vals = [per_style[s].get(k) for s in styles]
        if k == "fid" and cfg.effective_fid_mode == "pooled":
            from checker.fid import pooled_fid

            metrics[k] = pooled_fid([r for r, _ in m["fid_feats"]], [f for _, f in m["fid_feats"]])
            problems += _mixed_size_problem(m["fid_shapes"])
        elif k == "fid":
            metrics[k] = aggregate_fid(vals, cfg.effective_fid_mode)
        elif k == "clip_r":
            total = sum(per_style[s]["clip_r_total"] for s in styles)
            metrics[k] = sum(per_style[s]["clip_r_hits"] for s in styles) / total if total else None
        else:
            metrics[k] = mean_or_none(vals)
    result: dict[str, Any] = {}
    if cfg.random_weights:
        result["WARNING"] = RANDOM_WEIGHTS_WARNING
    result.update(
        checker_version=__version__,
        mode=cfg.mode,
        fid_mode=cfg.effective_fid_mode,
        clip_r_candidates=_candidates_label(cfg) if "clip_r" in cfg.metrics else None,
        hist_wraps=cfg.hist_wraps,
        clip_iqa_input_scale=cfg.clip_iqa_input_scale,
        random_weights=cfg.random_weights,
        metrics=metrics,
        final_score=final_from(metrics),
        original_keys={k: METRICS[k].key for k in cfg.metrics},
        higher_is_better={k: METRICS[k].higher_is_better for k in cfg.metrics},
        styles=per_style,
        problems=[p.__dict__ for p in problems],
        ignored_files=ignored,
        weights=dict(bb.sources),
        environment=_environment(device),
        timing_s={k: round(v, 3) for k, v in {**timer, "total": time.perf_counter() - t_start}.items()},
    )
    return result
