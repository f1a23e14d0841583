"""Peak memory and wall time of each style method on the tiny random model (one subprocess per method,
so each peak is its own), plus the StyleID feature cache at 512 px on the SD 2.1 architecture computed
from the shapes (what StyleID keeps: the style's K and V and each content image's Q, per injected
layer and timestep; nothing goes to disk), and what k references (--references) and native-size ones cost.

    source envs/env.sh && $JSTYLE_PYTHON bench/methods_memory.py [--size 64] [--steps 10]
    $JSTYLE_PYTHON bench/methods_memory.py --references      (only the k-references table, no model run)
    $JSTYLE_PYTHON bench/methods_memory.py --one styleid --model DIR --size 512 --steps 50 --device cuda \
        --dtype float16 --json        (one method on a given model: bench/gpu_check.sh's StyleID timing)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
from _sd21 import UNET, device_memory_mb, emit, peak_rss_mb  # noqa: E402
from unet_step import collect, device_args, gpu_check_line  # noqa: E402

METHODS = ("txt2img", "sdedit", "styleid", "diffstyle")


def one(method: str, model: Path, size: int, steps: int, device: str = "cpu", dtype: str = "float32") -> dict:
    """Run `method` once on `model`; emit and return its seconds (model loaded) and peak memory."""
    import numpy as np

    from jstyle import load_pipeline
    from jstyle.device import use_device

    if not (model / "model_index.json").exists():  # the random SD2.1 folder of bench/unet_step.py
        from txt2img import complete_folder

        complete_folder(model)
    use_device(device)
    pipe = load_pipeline(model, dtype=dtype)
    rng = np.random.default_rng(0)
    content = rng.integers(0, 256, (1, size, size, 3), dtype=np.uint8)
    style = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    start = time.perf_counter()
    if method == "txt2img":
        pipe.text_to_image("a dolphin", num_inference_steps=steps, height=size, width=size)
    elif method == "sdedit":
        from jstyle.methods.sdedit import img2img

        img2img(pipe, style, ["a dolphin"], strength=0.9, num_inference_steps=steps)
    elif method == "styleid":
        from jstyle.methods.styleid import StyleIDConfig, stylize

        stylize(pipe, content, style, StyleIDConfig(steps=steps, start_step=steps - 1))
    elif method == "diffstyle":
        from jstyle.methods.diffstyle import DiffStyleConfig, diffstyle

        diffstyle(pipe, content, style, DiffStyleConfig(steps=steps, inv_steps=steps))  # the artistic recipe
    result = {"method": method, "seconds": round(time.perf_counter() - start, 3), "peak_rss_mb": peak_rss_mb(),
              **device_memory_mb()}
    emit(result)
    return result


def styleid_cache_gb(size: int = 512, steps: int = 49, bytes_per: int = 2) -> float:
    """Style K, V + content Q for the attn1 of up_blocks[2..3].attentions[0..2] of SD 2.1, per timestep."""
    latent = size // 8
    channels = list(reversed(UNET["block_out_channels"]))  # up_blocks[i] width
    elements = 0
    for block, res in ((2, latent // 2), (3, latent)):
        elements += 3 * res * res * channels[block]  # 3 attentions, tokens x width each
    return 3 * elements * steps * bytes_per / 1e9  # K, V (style) + Q (content)


# parameters of SD 2.1's components (diffusers' counts of stabilityai/stable-diffusion-2-1)
SD21_PARAMS = {"unet": 865_910_724, "text_encoder": 340_387_840, "vae": 83_653_863}


def styleblend_memory_gb(size: int = 512, rows: int = 4, bytes_per: int = 2, vae_bytes: int = 4) -> dict[str, float]:
    """StyleBlend's expected GPU memory on SD 2.1 from tensor sizes: the weights (UNet and text encoder in
    `bytes_per`, the VAE in `vae_bytes`), the largest attention of one UNet call over `rows` rows (two branches x
    CFG): float32 scores (upcast_attention) and probabilities in `bytes_per` over heads x N^2 at the 64x64 level,
    and the VAE decoder's widest activations for the two branch images (4 live 128 x size^2 maps each)."""
    weights = (SD21_PARAMS["unet"] + SD21_PARAMS["text_encoder"]) * bytes_per + SD21_PARAMS["vae"] * vae_bytes
    tokens = (size // 8) ** 2
    heads = UNET["attention_head_dim"][0]  # SD 2.1 sets heads through attention_head_dim: 5 at the first level
    attention = rows * heads * tokens * tokens * (4 + bytes_per)
    decode = 2 * 4 * 128 * size * size * vae_bytes
    parts = {"weights": weights / 1e9, "attention": attention / 1e9, "vae_decode": decode / 1e9}
    return {**parts, "total": sum(parts.values())}


# StyleID diffusers variant's injected layers on SD 2.1: LDM output blocks 7-11 = up_blocks[2].attentions[1..2]
# (latent / 2 per side) and up_blocks[3].attentions[0..2] (latent per side); (up-block, attentions, heads)
DIFFUSERS_LAYERS = ((2, 2, 10), (3, 3, 5))


def references_memory(k: int, ref_px: int, size: int = 512, steps: int = 20, bytes_per: int = 2) -> dict:
    """GB of what k pooled references of ref_px x ref_px cost StyleID's diffusers variant on SD 2.1, from the tensor
    sizes: their K and V kept per injected layer and step (`kv_gb`), and the largest attention score matrix of one
    injected call, batch 1 (`scores_gb`: the content's tokens x all references' tokens x heads)."""
    channels = list(reversed(UNET["block_out_channels"]))
    kv = scores = 0
    for block, n_attn, heads in DIFFUSERS_LAYERS:
        div = 16 if block == 2 else 8
        tokens_ref, tokens_content = (ref_px // div) ** 2, (size // div) ** 2
        kv += 2 * n_attn * k * tokens_ref * channels[block]  # K and V, tokens x width, per layer
        scores = max(scores, heads * tokens_content * k * tokens_ref)
    return dict(kv_gb=kv * steps * bytes_per / 1e9, scores_gb=scores * bytes_per / 1e9)


def print_references_memory() -> None:
    from jstyle.methods.styleid_processors import MAX_SCORES

    print("StyleID (diffusers variant, 20 steps) with k references on SD 2.1, 512 px content, from the tensor sizes;"
          f" fp16 / fp32 GB; attention runs in query chunks above {MAX_SCORES * 4 / 2**30:.0f} GiB of fp32 scores")
    print(f"{'k':>3} {'reference':>9} {'K,V kept fp16':>14} {'fp32':>7} {'scores/call fp16':>17} {'fp32':>7}")
    for k in (1, 3, 10):
        for px in (512, 1024):
            h, f = references_memory(k, px), references_memory(k, px, bytes_per=4)
            print(f"{k:>3} {px:>7}px {h['kv_gb']:>14.2f} {f['kv_gb']:>7.2f} {h['scores_gb']:>17.2f} "
                  f"{f['scores_gb']:>7.2f}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--one", choices=METHODS, help="run this method only (on --model)")
    p.add_argument("--model", type=Path, help="with --one: a diffusers SD folder")
    p.add_argument("--references", action="store_true", help="print only the memory of k references / native size")
    device_args(p)
    args = p.parse_args()
    if args.references:
        print_references_memory()
        return 0
    if args.one:
        if args.model is None:
            p.error("--one needs --model DIR")
        r = one(args.one, args.model, args.size, args.steps, args.device, args.dtype)
        if args.json:
            gpu_check_line({"bench": f"method_{args.one}", "device": args.device, "dtype": args.dtype,
                            "size": args.size, "steps": args.steps, "jstyle": r})
        return 0
    from jstyle.tiny import write_tiny_pipeline

    with tempfile.TemporaryDirectory() as tmp:
        model = write_tiny_pipeline(Path(tmp) / "tiny", kind="sd2", seed=0)
        print(f"tiny random SD2-like model, {args.size} px, {args.steps} steps, one process per method")
        print(f"{'method':<10} {'peak RSS MB':>12} {'seconds':>9}")
        for method in METHODS:
            r = collect([sys.executable, __file__, "--one", method, "--model", str(model), "--size", str(args.size),
                         "--steps", str(args.steps)])
            print(f"{method:<10} {r['peak_rss_mb']:>12.0f} {r['seconds']:>9.1f}")
    print(f"StyleID feature cache at 512 px, SD 2.1, 49 steps, fp16: {styleid_cache_gb():.2f} GB for one style "
          f"and one content image (fp32 {styleid_cache_gb(bytes_per=4):.2f} GB), kept in memory")
    for size, nbytes in ((512, 2), (768, 4)):
        m = styleblend_memory_gb(size, bytes_per=nbytes, vae_bytes=4)
        print(f"StyleBlend at {size} px, SD 2.1, {'fp16' if nbytes == 2 else 'fp32'} (4 rows: two branches x CFG): "
              f"{m['total']:.1f} GB expected = weights {m['weights']:.1f} + largest attention {m['attention']:.1f} "
              f"+ VAE decode of 2 images {m['vae_decode']:.1f}")
    print_references_memory()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
