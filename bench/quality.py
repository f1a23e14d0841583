"""Quality per method and recipe on the demo styles: the checker's histogram score, shape IoU, seconds.

    source envs/env.sh
    $JSTYLE_PYTHON bench/quality.py [--model demo/model] [--data demo/data] [--json quality.json]

For every style of --data and every prompt of its prompt.json (the demo model's shape words), each
method makes one 64 px image; per method and recipe the table gives the mean histogram score against
the style's references (tests/style_measures.py, transcribed from checker/hist.py; higher = closer
colours), the mean shape IoU of the image's foreground with the prompted shape's template (content kept)
and the seconds per style (LoRA training included where a recipe trains one). Rows:
  base                 "a {obj}", the base model (no style: the floor)
  styleid g=.. T=..    StyleID of the base image with the style's first reference
  diffstyle g=..       DiffStyle (h-space) of the base image with the same reference
  dreambooth <recipe>  "{obj} in style_NN" (run_all's prompt) with the style's LoRA (recipe: a jstyle.training
                       preset as run_all trains it, or 'demo' = rank 8, lr 1e-3, "{obj} in style_NN" captions)
  sdedit <recipe>      img2img from the mean reference image with that LoRA (strength --strength)
  styleid_db <recipe>  StyleID of the LoRA's image with the first reference (run_all's default method)
  ... <recipe> sf      the dreambooth and sdedit rows with a LoRA trained on style-friendly timesteps (log-SNR ~
                       N(-6, 2^2), run_all's --timestep-sampling style-friendly), the same steps
  ... <recipe> joint   ... with one LoRA trained once on every style of --data together, each style with its own
                       token (run_all's --lora-scope joint), the same steps (so each style gets a third of them
                       on the 3 demo styles); its training seconds are shared out over the styles
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _sd21 import machine_line  # noqa: E402

from tests.style_measures import hist_score, shape_iou  # noqa: E402

STYLEID = ((0.75, 1.5), (0.5, 2.0))  # (gamma, T): the paper's, and a stronger style
DIFFSTYLE = (0.3, 0.6)
RECIPES = {"demo": dict(rank=8, learning_rate=1e-3, instance_template="{obj} in style_{id}")}


def _lora_config(recipe: str, style_dirs: list[Path], out: Path, size: int, steps: int, sampling: str = "uniform"):
    """The recipe's LoRA on one style folder, or on several at once (one LoRA, each folder its own token)."""
    from jstyle.training import preset

    data = dict(style_dir=str(style_dirs[0])) if len(style_dirs) == 1 else dict(style_dirs=tuple(map(str, style_dirs)))
    base = dict(**data, output_dir=str(out), resolution=size, max_train_steps=steps, progress=False,
                timestep_sampling=sampling)
    if recipe in RECIPES:
        return preset("baseline", **base, **RECIPES[recipe])
    if recipe == "strong":  # fewer class images at this size
        base["num_class_images"] = 8
    return preset(recipe, **base)


def train_joint(pipe, style_dirs: list[Path], recipes: list[str], out: Path, args) -> dict[str, tuple[Path, float]]:
    """Per recipe, one LoRA on every style folder together: {recipe: (LoRA file, training seconds)}."""
    from jstyle import lora as L
    from jstyle.train_lora import train_lora

    done = {}
    for recipe in recipes:
        t0 = time.time()
        path = train_lora(_lora_config(recipe, style_dirs, out / recipe, args.size, args.train_steps), pipe=pipe)
        done[recipe] = (path, time.time() - t0)
        L.unload_lora(pipe)
    return done


def run_style(pipe, style_dir: Path, recipes: list[str], args, joint: dict[str, tuple[Path, float]],
              n_styles: int) -> list[dict]:
    from jstyle import lora as L
    from jstyle.io import read_rgb
    from jstyle.methods.diffstyle import DiffStyleConfig, diffstyle
    from jstyle.methods.sdedit import img2img, mean_image
    from jstyle.methods.styleid import StyleIDConfig, invert_style, stylize
    from jstyle.train_lora import train_lora

    paths = sorted(p for p in (style_dir / "images").iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    refs = [read_rgb(p) for p in paths]
    objs = list(json.loads((style_dir / "prompt.json").read_text()).values())
    style = style_dir.name
    gen = dict(num_inference_steps=args.steps, guidance_scale=args.guidance, height=args.size, width=args.size)
    rows = []

    def row(method: str, images, t0: float) -> None:
        rows.append(dict(method=method, style=style, hist=hist_score(images, refs),
                         iou=float(np.mean([shape_iou(im, o) for im, o in zip(images, objs)])),
                         seconds=time.time() - t0))

    def txt2img(template: str):
        return [pipe.text_to_image(template.format(obj=o, id=style), generator=np.random.default_rng(args.seed),
                                   **gen)[0] for o in objs]

    reference = read_rgb(paths[0], args.size)
    scfg = StyleIDConfig(steps=args.steps, start_step=args.steps - 1)

    def styleid_rows(contents, label: str) -> None:
        if args.lora_only:
            return
        t0 = time.time()
        features = invert_style(pipe, reference, scfg)
        for gamma, temp in STYLEID:
            cfg = StyleIDConfig(gamma=gamma, T=temp, steps=args.steps, start_step=args.steps - 1)
            row(f"{label} g={gamma} T={temp}", [stylize(pipe, c[None], features, cfg)[0] for c in contents], t0)
            t0 = time.time()

    t0 = time.time()
    base = [] if args.lora_only else txt2img("a {obj}")
    if base:
        row("base", base, t0)
    styleid_rows(base, "styleid")
    for gamma in DIFFSTYLE if base else ():
        t0 = time.time()
        # content_replace_step 0: every step >= t_edit injects (20 steps share only 999 with the 50-step default)
        cfg = DiffStyleConfig(gamma=gamma, t_boost=0, steps=args.steps, inv_steps=args.steps, content_replace_step=0,
                              seed=args.seed)
        row(f"diffstyle g={gamma}", [diffstyle(pipe, c[None], reference, cfg)[0] for c in base], t0)
    init = mean_image(paths, args.size)

    def lora_rows(label: str, recipe: str, t0: float):
        template = "an image of {obj} in style_{id}" if recipe == "strong" else "{obj} in style_{id}"
        tuned = txt2img(template)
        row(f"dreambooth {label}", tuned, t0)
        t0 = time.time()
        row(f"sdedit {label} s={args.strength}",
            [img2img(pipe, init, [template.format(obj=o, id=style)], strength=args.strength,
                     num_inference_steps=args.steps, guidance_scale=args.guidance,
                     generator=np.random.default_rng(args.seed))[0] for o in objs], t0)
        L.unload_lora(pipe)
        return tuned

    for recipe in recipes:
        for variant in args.variants:
            t0 = time.time()
            if variant == "joint":
                path, seconds = joint[recipe]
                L.apply_lora(pipe, path)
                lora_rows(f"{recipe} joint", recipe, t0 - seconds / n_styles)
                continue
            with tempfile.TemporaryDirectory() as out:
                cfg = _lora_config(recipe, [style_dir], Path(out), args.size, args.train_steps, variant)
                train_lora(cfg, pipe=pipe)
            if variant == "uniform":
                tuned = lora_rows(recipe, recipe, t0)
                styleid_rows(tuned, f"styleid_db {recipe}")
            else:
                lora_rows(f"{recipe} sf", recipe, t0)
    return rows


def table(rows: list[dict]) -> list[dict]:
    """Mean over styles per method (in first-seen order)."""
    methods = list(dict.fromkeys(r["method"] for r in rows))
    out = []
    for m in methods:
        rs = [r for r in rows if r["method"] == m]
        out.append(dict(method=m, hist=float(np.mean([r["hist"] for r in rs])),
                        iou=float(np.mean([r["iou"] for r in rs])), seconds=float(np.mean([r["seconds"] for r in rs]))))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=ROOT / "demo" / "model")
    p.add_argument("--data", type=Path, default=ROOT / "demo" / "data")
    p.add_argument("--styles", default="", help="comma-separated style folders (default: all)")
    p.add_argument("--recipes", default="demo,baseline", help="LoRA recipes: demo, or jstyle.training presets")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--train-steps", type=int, default=200)
    p.add_argument("--variants", default="uniform,style-friendly,joint",
                   help="LoRA rows per recipe: uniform (per style, today's), style-friendly (per style, "
                   "style-friendly timesteps), joint (one LoRA for all styles)")
    p.add_argument("--lora-only", action="store_true", help="only the dreambooth and sdedit rows of the LoRA variants")
    p.add_argument("--guidance", type=float, default=5.0)
    p.add_argument("--strength", type=float, default=0.9)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="write the rows and the table here")
    args = p.parse_args(argv)
    args.variants = [v for v in args.variants.split(",") if v]

    from jstyle.pipeline import load_pipeline

    pipe = load_pipeline(args.model)
    wanted = [s for s in args.styles.split(",") if s]
    styles = sorted(d for d in args.data.iterdir()
                    if (d / "prompt.json").is_file() and (not wanted or d.name in wanted))
    rows = []
    recipes = [r for r in args.recipes.split(",") if r]
    with tempfile.TemporaryDirectory() as out:
        joint = train_joint(pipe, styles, recipes, Path(out), args) if "joint" in args.variants else {}
        for style_dir in styles:
            rows += run_style(pipe, style_dir, recipes, args, joint, len(styles))
            print(f"style {style_dir.name} done", flush=True)
    summary = table(rows)
    print(machine_line())
    names = [d.name for d in styles]
    print(f"\n{'method':30s} {'hist':>6s} {'IoU':>6s} {'s/style':>8s}   per style: hist / IoU ({', '.join(names)})"
          f"   ({len(styles)} styles, {args.size} px)")
    for r in summary:
        per = "  ".join(f"{x['hist']:.3f}/{x['iou']:.2f}" for x in rows if x["method"] == r["method"])
        print(f"{r['method']:30s} {r['hist']:6.3f} {r['iou']:6.3f} {r['seconds']:8.1f}   {per}")
    if args.json:
        args.json.write_text(json.dumps(dict(settings={k: str(v) for k, v in vars(args).items()}, table=summary,
                                              rows=rows), indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
