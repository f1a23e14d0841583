"""Convert pickled weights in a diffusers/transformers folder to safetensors (checker env, torch).

    $JSTYLE_CHECKER_PYTHON scripts/convert_to_safetensors.py MODEL_DIR [--dry-run]

Every `pytorch_model*.bin`, `diffusion_pytorch_model*.bin` (and `.pt`/`.pth`) under MODEL_DIR is
read with `torch.load(weights_only=True)` (no code runs) and written beside it with the name
diffusers/transformers use for safetensors, atomically. Shard index files are rewritten too.
A single-file `.ckpt` (original Stable Diffusion layout) is not a diffusers folder: convert it with
diffusers' `StableDiffusionPipeline.from_single_file(...).save_pretrained(DIR)` first.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from jstyle.io import atomic_path, atomic_write  # noqa: E402 - numpy only: runs in the checker env too

RENAMES = (("diffusion_pytorch_model", "diffusion_pytorch_model"), ("pytorch_model", "model"))


def target_name(src: Path) -> Path:
    stem = src.name.rsplit(".", 1)[0]
    for old, new in RENAMES:
        if stem.startswith(old):
            return src.with_name(new + stem[len(old):] + ".safetensors")
    return src.with_name(stem + ".safetensors")


def convert_file(src: Path) -> Path:
    import torch
    from safetensors.torch import save_file

    state = torch.load(src, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    tensors = {k: v.contiguous() for k, v in state.items() if isinstance(v, torch.Tensor)}
    dst = target_name(src)
    with atomic_path(dst) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    return dst


def convert_index(index: Path) -> Path:
    data = json.loads(index.read_text())
    data["weight_map"] = {k: target_name(index.with_name(v)).name for k, v in data["weight_map"].items()}
    dst = index.with_name(target_name(index.with_name(index.name.replace(".bin.index.json", ".bin"))).name
                          + ".index.json")
    atomic_write(dst, json.dumps(data, indent=2))
    return dst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--dry-run", action="store_true", help="list what would be converted")
    args = parser.parse_args(argv)
    if not args.model_dir.is_dir():
        print(f"error: {args.model_dir}: folder not found", file=sys.stderr)
        return 2
    sources = sorted(p for ext in ("*.bin", "*.pt", "*.pth") for p in args.model_dir.rglob(ext))
    ckpts = sorted(args.model_dir.rglob("*.ckpt"))
    if ckpts and not sources:
        print(f"error: {ckpts[0]}: a single-file checkpoint; convert it with diffusers' "
              "StableDiffusionPipeline.from_single_file(...).save_pretrained(DIR)", file=sys.stderr)
        return 2
    for src in sources:
        print(f"{src} -> {target_name(src).name}" if args.dry_run else f"wrote {convert_file(src)}")
    for index in sorted(args.model_dir.rglob("*.bin.index.json")):
        if not args.dry_run:
            print(f"wrote {convert_index(index)}")
    if not sources:
        print(f"nothing to convert under {args.model_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
