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
  styleid k=3          StyleID (gamma 0.75, T 1.5) with the style's 3 references pooled (--references 3)
  styleid 96x80 ...    StyleID from the first reference enlarged to 96x80 at run time (demo references are 64 px),
                       read at its own size (--reference-size native) or centre-cropped and resized to --size
  vsp / vsp nvqg       Visual Style Prompting text-to-image of "{obj}" with the first reference (official settings:
                       CFG 7, every step swapped, colour calibration), without / with negative visual query guidance
  dreambooth <recipe>  "{obj} in style_NN" (run_all's prompt) with the style's LoRA (recipe: a jstyle.training
                       preset as run_all trains it, or 'demo' = rank 8, lr 1e-3, "{obj} in style_NN" captions)
  sdedit <recipe>      img2img from the mean reference image with that LoRA (strength --strength)
  styleid_db <recipe>  StyleID of the LoRA's image with the first reference (run_all's default method)
  ... <recipe> sf      the dreambooth and sdedit rows with a LoRA trained on style-friendly timesteps (log-SNR ~
                       N(-6, 2^2), run_all's --timestep-sampling style-friendly), the same steps
  ... <recipe> joint   ... with one LoRA trained once on every style of --data together, each style with its own
                       token (run_all's --lora-scope joint), the same steps (so each style gets a third of them
                       on the 3 demo styles); its training seconds are shared out over the styles
  ti <F>               "A {obj} in the style of <F>." with the base model and a textual-inversion token trained
                       on the references (StyleBlend's fine-style TI settings, --train-steps steps)
  styleblend           StyleBlend's fine branch (jstyle.methods.styleblend; its three trainings --train-steps
                       steps each, the run_all --demo layers and 20 steps)
--groups picks row groups (base, styleid, diffstyle, vsp, lora, ti, styleblend); the StyleID and DiffStyle rows
need base; --variants picks the lora group's LoRAs (uniform, style-friendly, joint).
--trained OUT takes the ti and styleblend rows' weights from a `run_all.py --demo --method styleblend --out OUT`
run (its work/<style>/lora/: the same settings as these rows') instead of training them again: seconds then
count generation only.
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
    from jstyle.methods.vsp import VSPConfig, vsp
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

    groups = set(args.groups.split(","))
    if "ti" in groups:
        ti_row(pipe, style_dir, objs, args, row)
    if "styleblend" in groups:
        styleblend_row(pipe, style_dir, objs, args, row)
    base = []
    if "base" in groups:
        t0 = time.time()
        base = txt2img("a {obj}")
        row("base", base, t0)
    reference = read_rgb(paths[0], args.size)
    scfg = StyleIDConfig(steps=args.steps, start_step=args.steps - 1)

    def styleid_rows(contents, label: str) -> None:
        t0 = time.time()
        features = invert_style(pipe, reference, scfg)
        for gamma, temp in STYLEID:
            cfg = StyleIDConfig(gamma=gamma, T=temp, steps=args.steps, start_step=args.steps - 1)
            row(f"{label} g={gamma} T={temp}", [stylize(pipe, c[None], features, cfg)[0] for c in contents], t0)
            t0 = time.time()

    if base and "styleid" in groups:
        styleid_rows(base, "styleid")
    for gamma in DIFFSTYLE if base and "diffstyle" in groups else ():
        t0 = time.time()
        # content_replace_step 0: every step >= t_edit injects (20 steps share only 999 with the 50-step default)
        cfg = DiffStyleConfig(gamma=gamma, t_boost=0, steps=args.steps, inv_steps=args.steps, content_replace_step=0,
                              seed=args.seed)
        row(f"diffstyle g={gamma}", [diffstyle(pipe, c[None], reference, cfg)[0] for c in base], t0)
    if base and "styleid" in groups:
        styleid_reference_rows(pipe, paths, base, args, row)
    for nvqg in (False, True) if "vsp" in groups else ():
        t0 = time.time()
        vcfg = VSPConfig(steps=args.steps, variant="nvqg" if nvqg else "vsp")
        row("vsp nvqg" if nvqg else "vsp", list(vsp(pipe, reference[None], [f"a {o}" for o in objs], vcfg,
                                                     seed=args.seed, size=args.size)), t0)
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

    for recipe in recipes if "lora" in groups else ():
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


def styleid_reference_rows(pipe, paths: list[Path], base: list, args, row) -> None:
    """StyleID (0.75, 1.5) with 3 pooled references, and from a 96x80 reference read natively or resized."""
    from PIL import Image

    from jstyle.io import read_rgb
    from jstyle.methods.reference import read_reference
    from jstyle.methods.styleid import StyleIDConfig, invert_style, pool_features, stylize

    cfg = StyleIDConfig(steps=args.steps, start_step=args.steps - 1)
    t0 = time.time()
    pooled = pool_features([invert_style(pipe, read_rgb(p, args.size), cfg) for p in paths[:3]])
    row("styleid k=3 g=0.75 T=1.5", [stylize(pipe, c[None], pooled, cfg)[0] for c in base], t0)
    with tempfile.TemporaryDirectory() as tmp:  # a reference of another size than the demo's 64 px
        big = Path(tmp) / "ref96x80.png"
        Image.fromarray(read_rgb(paths[0])).resize((96, 80), Image.BICUBIC).save(big)
        for label, ref_size in (("native", None), (f"resized {args.size}", args.size)):
            t0 = time.time()
            features = invert_style(pipe, read_reference(big, ref_size), cfg)
            row(f"styleid 96x80 {label}", [stylize(pipe, c[None], features, cfg)[0] for c in base], t0)


def ti_row(pipe, style_dir: Path, objs: list[str], args, row) -> None:
    """Textual inversion alone: <F> trained as StyleBlend's fine style trains it, the base UNet generates."""
    from jstyle.methods.styleblend import FINE_TI_DIR, FINE_TOKEN, styled_prompt
    from jstyle.training.textual_inversion import TextualInversionConfig, train_textual_inversion

    t0 = time.time()
    if args.trained:
        pipe.load_textual_inversion(args.trained / "work" / style_dir.name / "lora" / FINE_TI_DIR)
    else:
        with tempfile.TemporaryDirectory() as out:
            cfg = TextualInversionConfig(style_dir=str(style_dir), output_dir=out, resolution=args.size,
                                         progress=False, max_train_steps=args.train_steps, learning_rate=0.01,
                                         adam_beta1=0.85, lr_scheduler="step", lr_step_size=30, lr_step_gamma=0.7,
                                         hflip=True, resize="squash", crop="center")
            train_textual_inversion(cfg, pipe)
    images = [pipe.text_to_image(styled_prompt(o, FINE_TOKEN), num_inference_steps=args.steps,
                                 guidance_scale=args.guidance, height=args.size, width=args.size,
                                 generator=np.random.default_rng(args.seed))[0] for o in objs]
    row("ti <F>", images, t0)


def styleblend_row(pipe, style_dir: Path, objs: list[str], args, row) -> None:
    """StyleBlend's fine branch after its three trainings (run_all --demo's settings)."""
    from jstyle import lora as L
    from jstyle.methods.styleblend import StyleBlendConfig, generate, load_tokens, train

    t0 = time.time()
    st = StyleBlendConfig(steps=args.steps, train_steps=args.train_steps, seed=args.seed)
    if args.trained:
        folder = args.trained / "work" / style_dir.name / "lora"
        L.apply_lora(pipe, folder / L.WEIGHT_NAME)
        load_tokens(pipe, folder)
    else:
        with tempfile.TemporaryDirectory() as out:
            train(pipe, st, style_dir, Path(out), args.size)
    images = [generate(pipe, o, st, args.size, args.guidance, args.seed)[0] for o in objs]
    L.unload_lora(pipe)
    row("styleblend", images, t0)


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
    p.add_argument("--guidance", type=float, default=5.0)
    p.add_argument("--strength", type=float, default=0.9)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--groups", default="base,styleid,diffstyle,vsp,lora,ti,styleblend", help="row groups to run")
    p.add_argument("--trained", type=Path, help="a run_all --method styleblend output: its weights for ti, styleblend")
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
        joint = train_joint(pipe, styles, recipes, Path(out), args) \
            if "joint" in args.variants and "lora" in args.groups.split(",") else {}
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
