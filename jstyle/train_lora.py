"""Train a DreamBooth-LoRA for one style: `python -m jstyle.train_lora --model SD --style-dir DIR` (or one LoRA for
several styles, each with its own token: `--style-dirs DIR1,DIR2`).

Function API: `train_lora(LoRATrainConfig(...), model="path/to/sd")` (or `pipe=` a loaded pipeline);
presets: `jstyle.training.preset("strong", style_dir=...)`. Every LoRATrainConfig field is a flag
(`--rank 32`, `--unet-targets to_q,to_v`, `--hflip / --no-hflip`); flags override the preset.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import JStyleError
from .training.config import PRESETS, LoRATrainConfig
from .training.trainer import LoRATrainer

__all__ = ["train_lora", "main"]


def train_lora(cfg: LoRATrainConfig, model: str | Path | None = None, pipe: Any = None,
               stop_after: int | None = None) -> Path:
    """Train and write <output_dir>/pytorch_lora_weights.safetensors (diffusers format); returns its path.

    stop_after: stop after this many steps of this call (as an interruption would); resume with
    cfg.resume = "latest" (checkpoints need checkpointing_steps > 0).
    """
    if pipe is None:
        if model is None:
            raise JStyleError("train_lora needs a model folder or a loaded pipeline")
        from .pipeline import load_pipeline

        pipe = load_pipeline(model, dtype="float16" if cfg.mixed_precision == "fp16" else "float32", vae_dtype="auto")
    return LoRATrainer(pipe, cfg).train(stop_after=stop_after)


def _parse_value(kind: str):
    def parse(text: str):
        if kind == "tuple":
            return tuple(t.strip() for t in text.split(",") if t.strip())
        if kind == "none_float":
            return None if text.lower() == "none" else float(text)
        return text if kind == "str" else {"int": int, "float": float}[kind](text)

    return parse


def _kind(f: dataclasses.Field) -> str | None:
    t = str(f.type)
    if "tuple" in t:
        return "tuple"
    if t.startswith("bool"):
        return "bool"
    if t.startswith("dict"):
        return None
    if "float" in t and "None" in t:
        return "none_float"
    for k in ("int", "float", "str"):
        if t.startswith(k):
            return k
    return "str"


def build_parser(cls: type = LoRATrainConfig, prog: str = "python -m jstyle.train_lora",
                 description: str = __doc__.splitlines()[0]) -> argparse.ArgumentParser:
    """--model, --preset, --device and one flag per field of the settings class `cls`."""
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--model", required=True, help="diffusers Stable Diffusion folder (the base model)")
    p.add_argument("--preset", choices=sorted(PRESETS), default="baseline")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    for f in dataclasses.fields(cls):
        kind = _kind(f)
        if kind is None:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else None
        if kind == "bool":
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                           help=f"(default {default})")
        else:
            p.add_argument(flag, type=_parse_value(kind), default=argparse.SUPPRESS,
                           help=f"(default {','.join(default) if isinstance(default, tuple) else default})")
    return p


def run_cli(argv: list[str] | None, cls: type, prog: str, description: str,
            train: Callable[[Any, Any], Path]) -> int:
    """A training CLI: flags of the settings class `cls` over the preset, the model loaded, `train(cfg, pipe)`;
    prints the written file, or a one-line error (exit 2)."""
    args = vars(build_parser(cls, prog, description).parse_args(argv))
    model, preset, device = args.pop("model"), args.pop("preset"), args.pop("device")
    try:
        from .device import use_device
        from .pipeline import load_pipeline

        use_device(device)
        cfg = cls.from_dict({**PRESETS[preset], **args})
        if not (cfg.style_dir or cfg.style_dirs):
            raise JStyleError("--style-dir is required (a folder with images/), or --style-dirs A,B,... for one "
                              "LoRA of several styles")
        pipe = load_pipeline(model, dtype="float16" if cfg.mixed_precision == "fp16" else "float32", vae_dtype="auto")
        path = train(cfg, pipe)
    except JStyleError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(path)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(argv, LoRATrainConfig, "python -m jstyle.train_lora", __doc__.splitlines()[0],
                   lambda cfg, pipe: train_lora(cfg, pipe=pipe))


if __name__ == "__main__":
    raise SystemExit(main())
