"""Convert pickled weights (a diffusers/transformers folder, or one LoRA file) to safetensors (checker env, torch).

    $JSTYLE_CHECKER_PYTHON scripts/convert_to_safetensors.py MODEL_DIR [--dry-run]
    $JSTYLE_CHECKER_PYTHON scripts/convert_to_safetensors.py style_00/pytorch_lora_weights.bin

Every `pytorch_model*.bin`, `diffusion_pytorch_model*.bin` (and `.pt`/`.pth`) under MODEL_DIR, or the
one file given, is read with `torch.load(weights_only=True)` (no code runs) and written beside it with
the name diffusers/transformers use for safetensors, atomically. Shard index files are rewritten too.

LoRA files (a JDiffusion `pytorch_lora_weights.bin`, any diffusers `save_lora_weights(...,
safe_serialization=False)` or PEFT `adapter_model.bin`) get today's diffusers key names: the older
`<module>.lora.down/up.weight`, `<module>.lora_linear_layer.down/up.weight` and attention-processor
`<attn>.processor.to_q_lora.down/up.weight` forms become `<module>.lora_A/lora_B.weight`, which jstyle
and diffusers both read. A pickle holds no adapter config, so alpha = rank is assumed on loading, as
diffusers does (JDiffusion's train.py trains with lora_alpha = rank); a PEFT adapter_config.json
beside the file still gives alpha.
A single-file `.ckpt` (original Stable Diffusion layout) is not a diffusers folder: convert it with
diffusers' `StableDiffusionPipeline.from_single_file(...).save_pretrained(DIR)` first.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from jstyle.io import atomic_path, atomic_write  # noqa: E402 - numpy only: runs in the checker env too

RENAMES = (("diffusion_pytorch_model", "diffusion_pytorch_model"), ("pytorch_model", "model"))
# older diffusers LoRA key forms -> today's (PEFT) names
_LORA_KEYS = (
    (re.compile(r"\.lora(?:_linear_layer)?\.down\.weight$"), ".lora_A.weight"),
    (re.compile(r"\.lora(?:_linear_layer)?\.up\.weight$"), ".lora_B.weight"),
)
_PROCESSOR_KEY = re.compile(r"^(.*)\.processor\.(to_q|to_k|to_v|to_out|add_k_proj|add_v_proj)_lora\.(down|up)\.weight$")


def target_name(src: Path) -> Path:
    stem = src.name.rsplit(".", 1)[0]
    for old, new in RENAMES:
        if stem.startswith(old):
            return src.with_name(new + stem[len(old):] + ".safetensors")
    return src.with_name(stem + ".safetensors")


def lora_key(key: str) -> str:
    """A LoRA key in today's diffusers form (`<module>.lora_A.weight` / `.lora_B.weight`)."""
    m = _PROCESSOR_KEY.match(key)
    if m:  # diffusers attention processors (unet.load_attn_procs): attn1.processor.to_out_lora.down.weight
        module = m.group(2) + (".0" if m.group(2) == "to_out" else "")
        return f"{m.group(1)}.{module}.lora_{'A' if m.group(3) == 'down' else 'B'}.weight"
    for pattern, new in _LORA_KEYS:
        key = pattern.sub(new, key)
    return key


def is_lora(keys: list[str]) -> bool:
    return any(".lora" in k or "_lora." in k for k in keys)


def convert_file(src: Path) -> Path:
    import torch
    from safetensors.torch import save_file

    state = torch.load(src, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    tensors = {k: v.contiguous() for k, v in state.items() if isinstance(v, torch.Tensor)}
    if is_lora(list(tensors)):
        renamed = {lora_key(k): v for k, v in tensors.items()}
        if len(renamed) != len(tensors):
            raise ValueError(f"{src}: two LoRA keys map to one name; not a LoRA layout this script knows")
        tensors = renamed
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
    parser.add_argument("model_dir", type=Path, help="a model folder, or one .bin/.pt/.pth file")
    parser.add_argument("--dry-run", action="store_true", help="list what would be converted")
    args = parser.parse_args(argv)
    if args.model_dir.is_file():
        src = args.model_dir
        if src.suffix not in (".bin", ".pt", ".pth"):
            print(f"error: {src}: not a pickled .bin/.pt/.pth file", file=sys.stderr)
            return 2
        try:
            print(f"{src} -> {target_name(src).name}" if args.dry_run else f"wrote {convert_file(src)}")
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        return 0
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
