"""--method auto: per style, every candidate makes a few of its prompts, the checker scores them, the best wins.

Per style (as tasks of the one task graph, so resume, atomic writes, workers and Ray work as for any method):

1. screening: each candidate (a method or recipe with optional settings, `--candidates`) makes the style's
   screening prompts into `work/screen/<candidate>/<style>/<Prompt>.png`: `--screen-prompts N` of them, a
   seeded draw (default_rng([seed, crc32(style)]), kept in prompt.json order; all of them when the style has
   N or fewer). Candidates with the same LoRA settings share one train task, and those with the same content
   settings share the content images (work files named by a hash of their settings);
2. select (in the run's own process, where the checker's scorer stays loaded): each candidate's images are
   scored against the style's references (`--select-by`: the official final with the style's own FID, or
   one metric), the best wins (the first listed on a tie); `work/select/<style>.json`, and `selection.json`
   gathers every style's (per candidate: its metrics, final, score, and seconds: the run time of its tasks
   for the style, a train or content task it shares counted in full);
3. final: the winner's screening images are copied to `<style>/<Prompt>.png`; it makes the other prompts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..io import atomic_write
from ..methods import registry
from .graph import Task, TaskGraph
from .plan import AUTO_FIELDS, RunConfig, final_path

__all__ = ["Candidate", "candidates", "parse_candidate", "screen_subset", "build_auto_graph", "screen_path",
           "select_path", "LOWER_IS_BETTER", "pick"]

LOWER_IS_BETTER = ("lpips", "fid")
# RunConfig fields a candidate may not set: the run's paths, workers and auto's own settings
NOT_PER_CANDIDATE = ("data", "model", "out", "styles", "devices", "backend", "address", "retries", "progress",
                     "method", "recipe", "train_settings", "shared_work", *AUTO_FIELDS)


@dataclass(frozen=True)
class Candidate:
    """One candidate: its canonical spec ("styleid:styleid_gamma=0.5") and the run settings it runs with."""

    spec: str
    cfg: RunConfig

    @property
    def slug(self) -> str:
        """Its folder name under work/screen/."""
        return re.sub(r"[^A-Za-z0-9_.=-]", "+", self.spec)


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_candidate(spec: str, run: RunConfig) -> Candidate:
    """"NAME[:key=value,...]": a method or a recipe over the run's settings, then the given settings."""
    from .. import recipes

    name, _, rest = spec.strip().partition(":")
    base = {k: v for k, v in run.to_dict().items() if k not in AUTO_FIELDS}
    base.update(shared_work=True, recipe=None)
    if name in registry.METHODS:
        base["method"] = name
    elif name in recipes.RECIPES:
        base.update(recipes.RECIPES[name].settings())
    else:
        raise ConfigError(f"--candidates {spec!r}: {name!r} is neither a method ({', '.join(registry.METHODS)}) nor "
                          f"a recipe ({', '.join(recipes.RECIPES)})")
    allowed = ({f.name for f in dataclasses.fields(RunConfig)} - {"settings", *NOT_PER_CANDIDATE}) | \
        registry.setting_keys()
    given: dict[str, str] = {}
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq or key.strip() not in allowed:
            raise ConfigError(f"--candidates {spec!r}: '{item}' is not a setting=value of a method or the run "
                              f"(e.g. styleid:styleid_gamma=0.5,steps=30)")
        given[key.strip()] = value.strip()
    kinds = {st.key: st.type for cls in registry.all_settings() for st in registry.settings_of(cls)}
    for key, text in given.items():
        value, kind = _value(text), kinds.get(key)
        if kind is not None and not isinstance(value, (float, int) if kind is float else kind):
            raise ConfigError(f"--candidates {spec!r}: {key}={text} is not a {kind.__name__}")
        base[key] = value
    try:
        cfg = RunConfig.from_dict(base)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"--candidates {spec!r}: {e}") from None
    if cfg.trains:  # a bad LoRA setting fails here, in one line
        from ..training import preset

        preset(cfg.preset, **cfg.train_overrides())
    return Candidate(name + (":" + ",".join(f"{k}={given[k]}" for k in sorted(given)) if given else ""), cfg)


def candidates(run: RunConfig) -> list[Candidate]:
    """The run's candidates (`--candidates`, else registry.default_candidates()), each once."""
    found: dict[str, Candidate] = {}
    for spec in run.candidates or registry.default_candidates():
        cand = parse_candidate(spec, run)
        if cand.slug in {c.slug for c in found.values()}:
            raise ConfigError(f"--candidates: {spec!r} is listed twice (as {cand.spec})")
        found[cand.spec] = cand
    if not found:
        raise ConfigError("--candidates: name at least one method or recipe")
    return list(found.values())


def screen_subset(run: RunConfig, style: str, objs: list[str]) -> list[str]:
    """The style's screening prompts: N drawn with default_rng([seed, crc32(style)]), in prompt.json order."""
    if len(objs) <= run.screen_prompts:
        return list(objs)
    rng = np.random.default_rng([run.seed, zlib.crc32(style.encode("utf-8"))])
    return [objs[i] for i in sorted(rng.choice(len(objs), run.screen_prompts, replace=False))]


def screen_path(slug: str, style: str, obj: str) -> str:
    return f"work/screen/{slug}/{style}/{obj}.png"


def select_path(style: str) -> str:
    return f"work/select/{style}.json"


def _keys(cand: Candidate, style: str, obj: str) -> dict[str, str]:
    """The task keys a candidate's screening image of `obj` needs: train, generate (where it has them), screen."""
    cfg, method, keys = cand.cfg, cand.cfg.method_entry, {}
    if method.trains:
        keys["train"] = f"{style}/{Path(cfg.lora_file(style)).parent.name}/train"
    if method.generates:
        keys["generate"] = f"{style}/{Path(cfg.content_file(style, obj)).parent.name}/generate/{obj}"
    keys["screen"] = f"{style}/screen/{cand.slug}/{obj}"
    return keys


def build_auto_graph(run: RunConfig, prompts: dict[str, list[str]]) -> TaskGraph:
    """Screening tasks per (candidate, style, prompt), shared train and generate tasks, a select task per style,
    then a final task per prompt that waits for its style's selection."""
    cands = candidates(run)
    graph = TaskGraph()
    for style, objs in prompts.items():
        screens = []
        for cand in cands:
            cfg = cand.cfg
            for obj in screen_subset(run, style, objs):
                keys = _keys(cand, style, obj)
                after: tuple[str, ...] = ()
                if "train" in keys and keys["train"] not in graph:
                    graph.add(Task(keys["train"], "train", style, outputs=(cfg.lora_file(style),), candidate=cand.spec))
                if "train" in keys:
                    after = (keys["train"],)
                if "generate" in keys:
                    if keys["generate"] not in graph:
                        graph.add(Task(keys["generate"], "generate", style, obj, after,
                                       (cfg.content_file(style, obj),), candidate=cand.spec))
                    after = (keys["generate"],)
                screens.append(graph.add(Task(keys["screen"], "screen", style, obj, after,
                                              (screen_path(cand.slug, style, obj),), candidate=cand.spec)).key)
        select = graph.add(Task(f"{style}/select", "select", style, deps=tuple(screens), outputs=(select_path(style),)))
        for obj in objs:
            graph.add(Task(f"{style}/final/{obj}", "final", style, obj, (select.key,), (final_path(style, obj),)))
    return graph.validate()


def pick(entries: dict[str, dict[str, Any]], select_by: str) -> str:
    """The candidate with the best `score` (lower for lpips / fid; an undefined score is the worst; the first
    listed wins a tie)."""
    sign = -1.0 if select_by in LOWER_IS_BETTER else 1.0

    def value(spec: str) -> float:
        score = entries[spec]["score"]
        return -np.inf if score is None else sign * score

    return max(entries, key=value)  # max keeps the first of equal values


def _digest(out_dir: Path, files: list[str], request: dict[str, Any]) -> str:
    h = hashlib.sha256(json.dumps(request, sort_keys=True).encode())
    for rel in files:
        h.update(rel.encode() + b"\0" + (out_dir / rel).read_bytes())
    return h.hexdigest()


def _task_seconds(out_dir: Path) -> dict[str, float]:
    try:
        tasks = json.loads((out_dir / "manifest.json").read_text()).get("tasks", {})
    except (OSError, json.JSONDecodeError):
        return {}
    return {k: rec.get("seconds", 0.0) for k, rec in tasks.items() if rec.get("status") == "done"}


def select(run: RunConfig, task: Task, ctx) -> dict[str, Any]:
    """Score every candidate's screening images of the style, pick the best, write its entry and selection.json.

    A candidate's scores are kept in work/select/<style>/<candidate>.json with a digest of the images they were
    computed from, so a rerun after a kill scores only what was not scored."""
    from ..data import read_prompts
    from ..scorer import Scorer

    if "scorer" not in ctx.cache:
        ctx.cache["scorer"] = Scorer(run.score_device, run.checker_weights, run.random_weights,
                                     log=ctx.out_dir / "logs" / "scorer.stderr.log")
    scorer, style = ctx.cache["scorer"], task.style
    prompts = screen_subset(run, style, read_prompts(Path(run.data) / style))
    metrics = ["hist"] if run.select_by == "hist" else None  # hist needs no backbone; the rest all six
    seconds = _task_seconds(ctx.out_dir)
    entries: dict[str, dict[str, Any]] = {}
    for cand in candidates(run):
        files = [screen_path(cand.slug, style, obj) for obj in prompts]
        request = {"prompts": prompts, "metrics": metrics, "random_weights": run.random_weights,
                   "weights": run.checker_weights}
        digest, kept = _digest(ctx.out_dir, files, request), ctx.out_dir / f"work/select/{style}/{cand.slug}.json"
        answer = None
        if kept.is_file():
            old = json.loads(kept.read_text())
            answer = old["answer"] if old.get("digest") == digest else None
        if answer is None:
            answer = scorer.score(ctx.out_dir / f"work/screen/{cand.slug}", run.data, style, prompts, metrics)
            atomic_write(kept, json.dumps({"digest": digest, "answer": answer}))
        keys = {k for obj in prompts for k in _keys(cand, style, obj).values()}
        score = answer["final"] if run.select_by == "final" else answer["metrics"][run.select_by]
        entries[cand.spec] = {"metrics": answer["metrics"], "final": answer["final"], "score": score,
                              "seconds": round(sum(seconds.get(k, 0.0) for k in keys), 1),
                              "score_seconds": answer["seconds"], "dir": f"work/screen/{cand.slug}",
                              "images": {obj: files[i] for i, obj in enumerate(prompts)}}
    winner = pick(entries, run.select_by)
    entry = {"style": style, "select_by": run.select_by, "prompts": prompts, "winner": winner, "candidates": entries}
    atomic_write(ctx.out_dir / select_path(style), json.dumps(entry, indent=1))
    write_selection(run, ctx.out_dir)
    ctx.log.info("style %s: %s wins by %s %.4f", style, winner, run.select_by, entries[winner]["score"] or np.nan)
    return {"winner": winner, "score": entries[winner]["score"]}


def write_selection(run: RunConfig, out_dir: Path) -> None:
    """<out>/selection.json: every selected style's entry (work/select/<style>.json), rewritten atomically."""
    styles = {}
    for style in run.styles or sorted(p.stem for p in (out_dir / "work" / "select").glob("*.json")):
        path = out_dir / select_path(style)
        if path.is_file():
            styles[style] = json.loads(path.read_text())
    note = ("per style: each candidate's scores on the style's screening prompts against its references; 'final' is "
            "the official formula with the style's own FID (the official FID pools every style)")
    atomic_write(out_dir / "selection.json", json.dumps({
        "select_by": run.select_by, "screen_prompts": run.screen_prompts, "random_weights": run.random_weights,
        "note": note, "styles": styles}, indent=1))


def winner_of(run: RunConfig, out_dir: Path, style: str) -> tuple[Candidate, list[str]]:
    """The style's winning candidate and its screened prompts (from work/select/<style>.json)."""
    entry = json.loads((out_dir / select_path(style)).read_text())
    return parse_candidate(entry["winner"], run), entry["prompts"]
