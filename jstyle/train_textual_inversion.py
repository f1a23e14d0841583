"""Train a textual-inversion token on a style: `python -m jstyle.train_textual_inversion --model SD --style-dir DIR`.

Writes <output-dir>/learned_embeds.safetensors (diffusers' file: `pipe.load_textual_inversion(path)` in diffusers
and in jstyle). Every TextualInversionConfig field is a flag (`--placeholder-token "<my-style>"`,
`--initializer-token style`, `--num-vectors 4`, `--max-train-steps 500`, `--learning-rate 5e-4`).
"""

from __future__ import annotations

import sys

from .errors import JStyleError
from .train_lora import build_parser
from .training.config import PRESETS
from .training.textual_inversion import TextualInversionConfig, train_textual_inversion

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(TextualInversionConfig, "python -m jstyle.train_textual_inversion",
                          __doc__.splitlines()[0])
    args = vars(parser.parse_args(argv))
    model, preset, device = args.pop("model"), args.pop("preset"), args.pop("device")
    try:
        from .device import use_device
        from .pipeline import load_pipeline

        use_device(device)
        cfg = TextualInversionConfig.from_dict({**PRESETS[preset], **args})
        if not cfg.style_dir:
            raise JStyleError("--style-dir is required (a folder with images/)")
        pipe = load_pipeline(model, dtype="float16" if cfg.mixed_precision == "fp16" else "float32", vae_dtype="auto")
        path = train_textual_inversion(cfg, pipe)
    except JStyleError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
