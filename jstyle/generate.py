"""Text-to-image from the command line:

    python -m jstyle.generate --model DIR --prompt "a dolphin" [--prompt ...] --out DIR

output: <out>/<prompt-slug>-<hash>-s<seed>.png, one per prompt and seed, written atomically. Files already
there are kept and not generated again, so an interrupted run can simply be restarted (use a new --out after
changing other settings). An image depends only on its prompt, seed and settings, not on its batch.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
from pathlib import Path

from .cli import run_cli
from .errors import InputError

__all__ = ["main", "output_name", "slugify"]

DTYPES = ("auto", "float32", "float16")


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line, `error: ...`, exit status 2 (like every jstyle error)."""

    def error(self, message: str):
        print(f"error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    from .schedulers import SCHEDULERS

    p = _Parser(
        prog="python -m jstyle.generate",
        description="Text-to-image with a diffusers Stable Diffusion 1.x/2.x folder (Jittor, no torch).",
        epilog=__doc__.split("\n\n", 2)[2] + "\nexample:\n  python -m jstyle.generate --model models/sd-2-1-base "
        "--prompt 'a lighthouse at dusk' --scheduler dpm++2m --steps 20 --batch 2 --out outputs/t2i",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", type=Path, required=True, metavar="DIR",
                   help="diffusers Stable Diffusion folder (with model_index.json)")
    p.add_argument("--prompt", action="append", default=[], metavar="TEXT",
                   help="text prompt; repeat for several prompts")
    p.add_argument("--negative-prompt", default="", metavar="TEXT", help="what to steer away from, for all prompts")
    p.add_argument("--steps", type=int, default=25, help="denoising steps (default %(default)s)")
    p.add_argument("--guidance", type=float, default=7.5,
                   help="classifier-free guidance scale; <= 1 turns it off (default %(default)s)")
    p.add_argument("--scheduler", default="ddim", metavar="NAME",
                   help=f"sampler: {', '.join(SCHEDULERS)} (default %(default)s)")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM noise scale, ddim only (default 0: deterministic)")
    p.add_argument("--height", type=int, default=512, help="image height, a multiple of 8 (default %(default)s)")
    p.add_argument("--width", type=int, default=512, help="image width, a multiple of 8 (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of each prompt's first image (default %(default)s)")
    p.add_argument("--batch", type=int, default=1, metavar="N",
                   help="images per prompt, seeds SEED .. SEED+N-1, denoised together (default %(default)s)")
    p.add_argument("--device", default="auto", metavar="{auto,cpu,cuda}",
                   help="where Jittor runs; auto picks CUDA when available (default %(default)s)")
    p.add_argument("--dtype", default="auto", metavar="{auto,float32,float16}",
                   help="auto: float16 on CUDA, float32 on CPU (default %(default)s)")
    p.add_argument("--lora", type=Path, metavar="FILE",
                   help="LoRA weights (diffusers, PEFT or kohya safetensors), e.g. from python -m jstyle.train_lora")
    p.add_argument("--lora-scale", type=float, default=1.0, help="strength of the LoRA (default %(default)s)")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder, created if missing")
    return p


def slugify(text: str, max_len: int = 60) -> str:
    """Lower-case ASCII words joined by '-', at most `max_len` characters ('prompt' if nothing is left)."""
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:max_len].rstrip("-")
    return slug or "prompt"


def output_name(prompt: str, seed: int) -> str:
    """<slug>-<8 hex of the prompt's sha1>-s<seed>.png: readable, and distinct prompts never share a file."""
    digest = hashlib.sha1(prompt.encode("utf-8")).hexdigest()[:8]
    return f"{slugify(prompt)}-{digest}-s{seed}.png"


def check_args(args: argparse.Namespace) -> None:
    """Reject unusable settings with one-line errors before the model is loaded."""
    from .schedulers import SCHEDULERS, get_scheduler

    if not args.prompt:
        raise InputError("no prompts given; pass --prompt TEXT (repeat it for several prompts)")
    if any(not p.strip() for p in args.prompt):
        raise InputError("empty --prompt; give each prompt some text")
    if args.height <= 0 or args.width <= 0 or args.height % 8 or args.width % 8:
        raise InputError(f"--height and --width must be positive multiples of 8, got {args.height}x{args.width}")
    if args.steps <= 0:
        raise InputError(f"--steps must be at least 1, got {args.steps}")
    if args.guidance < 0:
        raise InputError(f"--guidance must be >= 0, got {args.guidance}")
    if args.batch <= 0:
        raise InputError(f"--batch must be at least 1, got {args.batch}")
    if args.seed < 0:
        raise InputError(f"--seed must be >= 0, got {args.seed}")
    if args.scheduler not in SCHEDULERS:
        get_scheduler(args.scheduler, {})  # raises the ConfigError that lists the names
    if args.eta and args.scheduler != "ddim":
        raise InputError(f"--eta is a DDIM setting; --scheduler {args.scheduler} does not take it")
    if args.eta < 0:
        raise InputError(f"--eta must be >= 0, got {args.eta}")
    if args.lora is not None and not args.lora.is_file():
        raise InputError(f"--lora {args.lora}: file not found")
    if args.dtype not in DTYPES:
        raise InputError(f"unknown --dtype '{args.dtype}'; use one of {', '.join(DTYPES)}")


def run(args: argparse.Namespace) -> int:
    import numpy as np
    from tqdm import tqdm

    from .device import use_device
    from .io import save_png
    from .pipeline import load_pipeline

    check_args(args)
    prompts = list(dict.fromkeys(args.prompt))  # repeated prompts once
    seeds = range(args.seed, args.seed + args.batch)
    jobs = [(p, [s for s in seeds if not (args.out / output_name(p, s)).exists()]) for p in prompts]
    jobs = [(p, missing) for p, missing in jobs if missing]
    total, todo = len(prompts) * args.batch, sum(len(missing) for _, missing in jobs)
    if not todo:
        print(f"all {total} images already in {args.out}; nothing to do")
        return 0
    device = use_device(args.device)
    dtype = args.dtype if args.dtype != "auto" else ("float16" if device == "cuda" else "float32")
    if dtype == "float16" and device != "cuda":
        raise InputError("--dtype float16 needs --device cuda (half precision is very slow on CPU); use float32")
    pipe = load_pipeline(args.model, dtype=dtype, vae_dtype="auto")  # a float32 VAE if force_upcast
    if args.lora is not None:
        from .lora import apply_lora

        apply_lora(pipe, args.lora, scale=args.lora_scale)
    args.out.mkdir(parents=True, exist_ok=True)
    with tqdm(total=todo, desc="generating", unit="img") as bar:
        for prompt, missing in jobs:
            images = pipe.text_to_image(
                [prompt] * len(missing), negative_prompt=args.negative_prompt, num_inference_steps=args.steps,
                guidance_scale=args.guidance, height=args.height, width=args.width, scheduler=args.scheduler,
                eta=args.eta, generator=[np.random.default_rng(s) for s in missing], progress=True,
            )
            for seed, image in zip(missing, images):
                info = {"prompt": prompt, "negative_prompt": args.negative_prompt, "seed": str(seed),
                        "steps": str(args.steps), "guidance": str(args.guidance), "scheduler": args.scheduler,
                        "model": str(args.model), "generator": "jstyle"}
                if args.lora is not None:
                    info.update(lora=str(args.lora), lora_scale=str(args.lora_scale))
                save_png(image, args.out / output_name(prompt, seed), info)
                bar.update(1)
    print(f"wrote {todo} image{'s' * (todo != 1)} to {args.out} ({total - todo} already there)")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (2 with a one-line `error: ...` for a user-fixable problem)."""
    return run_cli(build_parser(), run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
