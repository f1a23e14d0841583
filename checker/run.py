"""Evaluation driver: load each backbone once, walk the styles, run every metric of the registry.

The driver knows no metric by name: each ``checker.metric.Metric`` builds its backbone, scores a
style and aggregates its styles (``checker.metrics`` lists the six; any other registry may be passed).
``load_backbones`` builds the models a config needs (real weights from local paths, or random);
``evaluate`` returns the result dict written to result.json.
"""

from __future__ import annotations

import platform
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from checker import __version__
from checker.config import COURSE_STYLES, RANDOM_WEIGHTS_WARNING, CheckerConfig
from checker.data import Problem, discover_styles, list_images, load_style, read_prompts
from checker.errors import CheckerError
from checker.metric import Backbones, Metric, Run, StyleResult
from checker.metrics import METRICS
from checker.score import final_from
from checker.weights import SLOTS

__all__ = ["Backbones", "load_backbones", "check_inputs", "evaluate"]

Log = Callable[[str], None]


def _selected(cfg: CheckerConfig, registry: Mapping[str, Metric]) -> list[Metric]:
    unknown = [m for m in cfg.metrics if m not in registry]
    if unknown:
        raise CheckerError(f"--metrics {','.join(unknown)}: unknown; choose from {','.join(registry)}")
    return [registry[m] for m in cfg.metrics]


def load_backbones(
    cfg: CheckerConfig,
    weights_dir: Path | None = None,
    overrides: Mapping[str, Path | None] | None = None,
    log: Log = lambda s: None,
    registry: Mapping[str, Metric] = METRICS,
) -> Backbones:
    """Build every backbone ``cfg.metrics`` needs, once. Missing weights: one CheckerError."""
    from checker.weights import resolve_weights

    metrics = _selected(cfg, registry)
    wanted = list(dict.fromkeys(s for m in metrics for s in m.weights))
    required = [s for s in wanted if not SLOTS[s].optional]
    optional = [s for s in wanted if SLOTS[s].optional]  # shipped in a wheel: real even in random mode
    if cfg.random_weights:
        paths = {s: None for s in required} | resolve_weights(optional, weights_dir, overrides)
    else:
        paths = resolve_weights(required + optional, weights_dir, overrides)
    bb = Backbones()
    for m in metrics:
        if m.build is None:
            continue
        t0 = time.perf_counter()
        bb.models.update(m.build({s: paths[s] for s in m.weights}, cfg.seed))
        for slot in (s for s in m.weights if not SLOTS[s].optional):
            bb.sources[slot] = "random" if cfg.random_weights else str(paths[slot])
            log(f"loaded {slot} from {bb.sources[slot]} in {time.perf_counter() - t0:.1f}s")
    return bb


class _Timer(dict):
    def add(self, key: str, t0: float) -> None:
        self[key] = self.get(key, 0.0) + time.perf_counter() - t0


def _environment(device: torch.device) -> dict[str, Any]:
    env: dict[str, Any] = {"device": str(device), "torch": torch.__version__, "python": platform.python_version(),
                           "threads": torch.get_num_threads(), "argv": sys.argv[1:]}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["cuda_peak_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    return env


def check_inputs(cfg: CheckerConfig, registry: Mapping[str, Metric] = METRICS) -> list[str]:
    """Fail fast (before any model is loaded) on a bad --submission / --data / --styles / metric input."""
    metrics = _selected(cfg, registry)
    if not cfg.submission.is_dir():
        raise CheckerError(f"--submission {cfg.submission}: not a folder; expected <submission>/<style>/<Prompt>.png")
    flag = "--course-styles" if cfg.styles == COURSE_STYLES else "--styles"
    styles = discover_styles(cfg.data, cfg.styles, flag)
    if cfg.prompts is not None:
        words = read_prompts(cfg.data / styles[0] / "prompt.json")
        unknown = sorted(set(cfg.prompts) - set(words))
        if len(styles) != 1 or unknown:
            raise CheckerError(f"--prompts {','.join(unknown or cfg.prompts)}: give prompts of one style's "
                               f"prompt.json ({cfg.data / styles[0] / 'prompt.json'}) with --styles STYLE")
    for m in metrics:
        m.check(cfg)
    return styles


def evaluate(cfg: CheckerConfig, bb: Backbones, log: Log = lambda s: None,
             registry: Mapping[str, Metric] = METRICS) -> dict[str, Any]:
    """Run every metric of ``cfg`` (looked up in ``registry``) with the loaded backbones; returns the result dict."""
    metrics = _selected(cfg, registry)
    check_inputs(cfg, registry)
    t_start = time.perf_counter()
    device = torch.device(cfg.device)
    styles, all_styles = discover_styles(cfg.data, cfg.styles), set(discover_styles(cfg.data))
    problems: list[Problem] = [  # a folder without images (run_all's logs/, work/) is not a submitted style
        Problem("unexpected_style", str(p), "not a style of the dataset: ignored")
        for p in sorted(cfg.submission.iterdir())
        if p.is_dir() and not p.name.startswith(".") and p.name not in all_styles and list_images(p)[0]
    ]
    run = Run(cfg, device, tuple(styles))
    timer = _Timer()
    states: dict[str, Any] = {}
    for m in metrics:
        t0 = time.perf_counter()
        states[m.name] = m.start(bb, run)
        timer.add(m.name, t0)

    results: list[StyleResult] = []
    ignored: list[str] = []
    for style in styles:
        t0 = time.perf_counter()
        sd = load_style(cfg.data, cfg.submission, style, cfg.prompts)
        timer.add("load", t0)
        scores = {}
        for m in metrics:
            t1 = time.perf_counter()
            scores[m.name] = m.score_style(states[m.name], sd, run)
            timer.add(m.name, t1)
        results.append(StyleResult.of(sd, scores))
        problems += sd.problems + [p for s in scores.values() for p in s.problems]
        ignored += sd.ignored
        shown = " ".join(f"{k}={s.value:.4f}" for k, s in scores.items() if isinstance(s.value, float))
        log(f"style {style}: {len(sd.gens)} generated, {len(sd.refs)} references  {shown}  "
            f"[{time.perf_counter() - t0:.1f}s]")

    values: dict[str, float | None] = {}
    for m in metrics:
        t0 = time.perf_counter()
        values[m.name], more = m.aggregate([r.scores[m.name] for r in results], run)
        problems += more
        timer.add(m.name, t0)
    result: dict[str, Any] = {}
    if cfg.random_weights:
        result["WARNING"] = RANDOM_WEIGHTS_WARNING
    result.update(
        checker_version=__version__,
        mode=cfg.mode,
        fid_mode=cfg.effective_fid_mode,
        clip_r_candidates=cfg.clip_r_candidates,
        hist_wraps=cfg.hist_wraps,
        clip_iqa_input_scale=cfg.clip_iqa_input_scale,
        random_weights=cfg.random_weights,
        metrics=values,
        final_score=final_from(values),
        original_keys={m.name: m.key for m in metrics},
        higher_is_better={m.name: m.higher_is_better for m in metrics},
        styles={r.name: r.as_dict() for r in results},
        problems=[p.__dict__ for p in problems],
        ignored_files=ignored,
        weights=dict(bb.sources),
        environment=_environment(device),
        timing_s={k: round(v, 3) for k, v in {**timer, "total": time.perf_counter() - t_start}.items()},
    )
    return result
