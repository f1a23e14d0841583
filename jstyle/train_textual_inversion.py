"""Train a textual-inversion token on a style: `python -m jstyle.train_textual_inversion --model SD --style-dir DIR`.

Writes <output-dir>/learned_embeds.safetensors (diffusers' file: `pipe.load_textual_inversion(path)` in diffusers
and in jstyle). Every TextualInversionConfig field is a flag (`--placeholder-token "<my-style>"`,
`--initializer-token style`, `--num-vectors 4`, `--max-train-steps 500`, `--learning-rate 5e-4`).
"""

from __future__ import annotations

from .train_lora import run_cli
from .training.textual_inversion import TextualInversionConfig, train_textual_inversion

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    return run_cli(argv, TextualInversionConfig, "python -m jstyle.train_textual_inversion", __doc__.splitlines()[0],
                   train_textual_inversion)


if __name__ == "__main__":
    raise SystemExit(main())
