"""The whole job, thin wiring over jstyle (library logic lives in jstyle/).

Today: `--demo` runs the tiny random model's components end to end on the embedded demo data
(tokenizer -> text encoder -> UNet + DDIM with CFG -> VAE decode -> <out>/<style>/<Prompt>.png).
The multi-GPU task graph, LoRA training and the style methods plug in here as they land.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="run_all.sh", description=__doc__.split("\n\n")[0])
    p.add_argument("--demo", action="store_true", help="tiny random model on demo/data (CPU, minutes)")
    p.add_argument("--data", type=Path, default=ROOT / "demo" / "data", help="dataset: <style>/images, prompt.json")
    p.add_argument("--model", type=Path, help="diffusers Stable Diffusion folder (default with --demo: a tiny one)")
    p.add_argument("--out", type=Path, default=Path("outputs/demo"), help="results: <out>/<style>/<Prompt>.png")
    p.add_argument("--styles", default="", help="comma list of styles (default: all in --data)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--steps", type=int, default=None, help="DDIM steps (default 25; demo 4)")
    p.add_argument("--guidance", type=float, default=7.5, help="classifier-free guidance scale")
    p.add_argument("--size", type=int, default=None, help="generation size in pixels (default 512; demo 64)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-check", action="store_true", help="with --demo: skip scoring with check.sh")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from jstyle.errors import JStyleError

    try:
        return run(args)
    except JStyleError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    import numpy as np
    from PIL import Image
    from tqdm import tqdm

    from jstyle import load_pipeline, write_tiny_pipeline
    from jstyle.data import list_styles, read_prompts
    from jstyle.device import use_device
    from jstyle.images import save_png

    device = use_device(args.device)
    steps = args.steps or (4 if args.demo else 25)
    size = args.size or (64 if args.demo else 512)
    model = args.model
    if model is None:
        if not args.demo:
            raise SystemExit("error: --model DIR is required (or use --demo)")
        home = Path(os.environ.get("JSTYLE_HOME", Path.home() / ".cache" / "jstyle"))
        model = home / "models" / f"tiny-sd2-seed{args.seed}"
        if not (model / "model_index.json").exists():
            write_tiny_pipeline(model, kind="sd2", seed=args.seed)
    pipe = load_pipeline(model, dtype="float16" if device == "cuda" else "float32")
    styles = list_styles(args.data, [s for s in args.styles.split(",") if s])
    jobs = [(s, p) for s in styles for p in read_prompts(args.data / s)]
    started = time.time()
    done = 0
    for style, prompt in tqdm(jobs, desc="generating", unit="img"):
        target = args.out / style / f"{prompt}.png"
        if target.exists():
            continue
        rng = np.random.default_rng(args.seed)
        image = pipe.text_to_image(f"{prompt} in style_{style}", num_inference_steps=steps,
                                   guidance_scale=args.guidance, height=size, width=size, generator=rng)[0]
        target.parent.mkdir(parents=True, exist_ok=True)
        save_png(np.asarray(Image.fromarray(image).resize((512, 512), Image.BICUBIC)), target)
        done += 1
    manifest = {"model": str(model), "device": device, "steps": steps, "size": size, "seed": args.seed,
                "generated": done, "total": len(jobs), "seconds": round(time.time() - started, 1)}
    (args.out / "run.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"{len(jobs)} images under {args.out} ({done} new, {time.time() - started:.0f} s)")
    if args.demo and not args.no_check:
        return score_demo(args)
    return 0


def score_demo(args: argparse.Namespace) -> int:
    """Score the demo with check.sh in the checker env (random-weight backbones: labelled meaningless)."""
    import subprocess

    cmd = ["bash", str(ROOT / "check.sh"), "--submission", str(args.out), "--data", str(args.data),
           "--random-weights", "--out", str(args.out / "result.json"), "--report", str(args.out / "report.html")]
    if args.styles:
        cmd += ["--styles", args.styles]
    print("scoring: " + " ".join(cmd), flush=True)
    return subprocess.run(cmd).returncode


if __name__ == "__main__":
    raise SystemExit(main())
