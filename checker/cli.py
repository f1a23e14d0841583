"""Command line: ``python -m checker --submission DIR --data DIR --out result.json``.

Exit codes: 0 ok, 2 bad input / missing weights (one message, no traceback), 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from checker import __version__
from checker.config import (
    CLIP_R_SHIPPED,
    CLIP_R_UNION,
    COURSE_STYLES,
    FID_MODE_ALIASES,
    FID_MODES,
    METRIC_NAMES,
    METRICS,
    MODES,
    RANDOM_WEIGHTS_WARNING,
    CheckerConfig,
)
from checker.errors import CheckerError
from checker.files import write_text_atomic
from checker.weights import SLOTS, WEIGHTS_DIR_ENV

__all__ = ["build_parser", "config_from_args", "main", "write_json_atomic"]

_EPILOG = f"""
modes (both: pooled FID, the shipped 215-word CLIP-R list, clip_iqa under its own key,
stray files ignored, mixed sizes scored; docs/checker.md has the quirk table):
  official  the distributed score_api.py + fid_api.py as they ran: uint8 wraps in the histograms,
            CLIP-IQA fed ToTensor()*255 with data_range=1.
  fixed     histograms without wraps, CLIP-IQA on [0, 1] input.
fid modes: pooled (fid_api.py: one FID, all styles' references vs all generated images),
  last-style (the unused fid_api_old.py's bug), per-style-mean (jstyle's own rule).
final = (0.2 dino + 0.4 hist + 0.4 (1 - lpips)) * (0.5 clip_r + 0.4 (20 - min(fid, 20)) / 20 + 0.1 clip_iqa)

weights (never downloaded): --weights DIR (or ${WEIGHTS_DIR_ENV}) holding
""" + "\n".join(
    f"  {s.names[0]:<40} {s.what}\n  {'':<40} [{s.flag} PATH | ${s.env}]" for s in SLOTS.values()
) + """
  --random-weights builds the same architectures with random weights (demo/tests; scores are meaningless).
See docs/checker.md for the layout, conversions and size handling.
"""


def build_parser() -> argparse.ArgumentParser:
    """The CLI's argument parser (also documents every flag in --help)."""
    p = argparse.ArgumentParser(
        prog="python -m checker",
        description="Score a style-transfer submission with the challenge's six metrics and final score.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--submission", type=Path, required=True, metavar="DIR", help="folder of <style>/<Prompt>.png")
    p.add_argument("--data", type=Path, required=True, metavar="DIR",
                   help="dataset folder of <style>/images/* and <style>/prompt.json")
    p.add_argument("--out", type=Path, default=Path("result.json"), metavar="JSON",
                   help="result JSON (written atomically; default result.json)")
    p.add_argument("--report", type=Path, default=None, metavar="HTML",
                   help="also write a self-contained HTML report (thumbnails + per-image scores)")
    p.add_argument("--selection", type=Path, default=None, metavar="JSON",
                   help="with --report: run_all --method auto's selection.json; the report shows each style's "
                        "candidates side by side (their screening images and scores, the winner marked)")
    p.add_argument("--weights", type=Path, default=None, metavar="DIR",
                   help=f"weights folder (default ${WEIGHTS_DIR_ENV}); layout below")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    p.add_argument("--mode", choices=MODES, default="official", help="official (default) or fixed")
    p.add_argument("--fid-mode", choices=FID_MODES + tuple(FID_MODE_ALIASES), default=None, metavar="RULE",
                   help=f"{' | '.join(FID_MODES)} (default pooled; all-styles: old name of per-style-mean)")
    p.add_argument("--styles", default=None, metavar="LIST", help="comma-separated subset, e.g. 00,01 (default: all)")
    p.add_argument("--prompts", default=None, metavar="LIST",
                   help="with one style: only these prompts of its prompt.json are expected, e.g. Cat,Dog (a "
                        "screening subset; the others are neither scored nor counted missing); default: all")
    p.add_argument("--course-styles", action="store_true",
                   help="score exactly styles 00-14, as the course copy (score_api.py ref_style_numbers = 15)")
    p.add_argument("--metrics", default=",".join(METRIC_NAMES), metavar="LIST",
                   help=f"comma-separated subset of {','.join(METRIC_NAMES)}; the final score needs all six")
    p.add_argument("--clip-r-prompts", default=CLIP_R_SHIPPED, metavar="TXT",
                   help=f"CLIP-R candidate words: a file, one per line; {CLIP_R_SHIPPED} (default: the distributed "
                        f"215-word clip_r_prompts.txt); {CLIP_R_UNION} (all prompt.json values of --data)")
    p.add_argument("--batch-size", type=int, default=16, metavar="N", help="images per forward pass (default 16)")
    p.add_argument("--random-weights", action="store_true",
                   help="random weights for every backbone (demo/tests only: scores are MEANINGLESS)")
    p.add_argument("--seed", type=int, default=0, help="seed for --random-weights (default 0)")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    for s in SLOTS.values():
        p.add_argument(s.flag, type=Path, default=None, dest=f"w_{s.name}", metavar="PATH", help=f"{s.what} [${s.env}]")
    p.add_argument("--version", action="version", version=f"jstyle checker {__version__}")
    return p


def _resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise CheckerError(f"--device {name}: CUDA is not available in this environment; use --device cpu")
    if name != "cpu" and not name.startswith("cuda"):
        raise CheckerError(f"--device {name}: expected auto, cpu, cuda or cuda:N")
    return name


def _csv(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    items = tuple(t.strip() for t in text.split(",") if t.strip())
    return items or None


def config_from_args(args: argparse.Namespace) -> CheckerConfig:
    """Frozen config from parsed args; bad values become CheckerError."""
    metrics = _csv(args.metrics) or METRIC_NAMES
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise CheckerError(f"--metrics {','.join(unknown)}: unknown; choose from {','.join(METRIC_NAMES)}")
    if args.batch_size < 1:
        raise CheckerError("--batch-size must be >= 1")
    styles = _csv(args.styles)
    if args.course_styles:
        if styles is not None:
            raise CheckerError("--course-styles and --styles: give one of them (--course-styles = --styles 00,...,14)")
        styles = COURSE_STYLES
    if args.fid_mode in FID_MODE_ALIASES:
        print(f"note: --fid-mode {args.fid_mode} is deprecated; it is {FID_MODE_ALIASES[args.fid_mode]}",
              file=sys.stderr)
    only = _csv(args.prompts)
    if only is not None and (styles is None or len(styles) != 1):
        raise CheckerError("--prompts names prompts of one style: give it with --styles STYLE")
    prompts = args.clip_r_prompts
    return CheckerConfig(
        submission=args.submission, data=args.data, mode=args.mode, fid_mode=args.fid_mode,
        styles=styles, metrics=tuple(m for m in METRIC_NAMES if m in metrics),
        device=_resolve_device(args.device), batch_size=args.batch_size, random_weights=args.random_weights,
        seed=args.seed, clip_r_prompts=prompts if prompts in (CLIP_R_SHIPPED, CLIP_R_UNION) else Path(prompts),
        prompts=only,
    )


def _finite(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def write_json_atomic(obj: Any, path: Path) -> None:
    """Write JSON atomically (never a half file)."""
    write_text_atomic(path, json.dumps(_finite(obj), indent=1, allow_nan=False) + "\n")


def _run(argv: Sequence[str] | None, backbones: Any = None) -> int:
    args = build_parser().parse_args(argv)
    if args.selection is not None and not args.selection.is_file():
        raise CheckerError(f"--selection {args.selection}: not found; give run_all --method auto's selection.json")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach a hub, even by accident
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    cfg = config_from_args(args)
    log = (lambda s: None) if args.quiet else (lambda s: print(s, file=sys.stderr, flush=True))
    import torch

    from checker.run import check_inputs, evaluate, load_backbones

    check_inputs(cfg)
    if cfg.random_weights:
        log("!! " + RANDOM_WEIGHTS_WARNING)

    if cfg.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = False  # full fp32, as the reference libraries compute
        torch.backends.cudnn.allow_tf32 = False
    t0 = time.perf_counter()
    overrides = {name: getattr(args, f"w_{name}") for name in SLOTS}
    bb = backbones if backbones is not None else load_backbones(cfg, args.weights, overrides, log)
    log(f"models ready in {time.perf_counter() - t0:.1f}s on {cfg.device}")
    result = evaluate(cfg, bb, log)
    write_json_atomic(result, args.out)
    if args.report is not None:
        from checker.report import write_html_report

        write_html_report(result, args.report, selection=args.selection)
    from checker.report import summary_table

    print(summary_table(result))
    print(f"wrote {args.out}" + (f" and {args.report}" if args.report else ""))
    return 0


def main(argv: Sequence[str] | None = None, backbones: Any = None) -> int:
    """CLI entry point; ``backbones`` lets tests reuse models already built."""
    try:
        return _run(argv, backbones)
    except CheckerError as exc:
        lines = str(exc).splitlines() or ["unknown error"]
        print("error: " + lines[0], file=sys.stderr)
        for line in lines[1:]:
            print("       " + line, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
