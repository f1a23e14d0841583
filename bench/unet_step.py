"""Benchmark: one UNet step (CFG batch 2), one VAE decode, one text encode on the Stable Diffusion 2.1
architecture with the same random weights, jstyle (Jittor) vs diffusers (PyTorch), each in its own env
and process. Prints medians, the jstyle/diffusers time ratio and peak memory.

    bash envs/setup.sh && source envs/env.sh
    $JSTYLE_PYTHON bench/unet_step.py [--latent 32] [--repeats 3] [--parts unet,vae,text]

The random SD2.1 folder (~5 GB, made once by diffusers) is cached under $JSTYLE_HOME/bench/.
Latent 32 = 256 px images (a 2-core CPU finishes in minutes); 64 = 512 px.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _sd21 import emit, peak_rss_mb, timed  # noqa: E402


def jstyle_side(folder: Path, latent: int, repeats: int, parts: list[str]) -> None:
    import jittor as jt
    import numpy as np

    sys.path.insert(0, str(HERE.parent))
    from jstyle.loading import load_model

    rng = np.random.default_rng(0)
    result = {"side": "jstyle", "jittor": jt.__version__, "use_mkl": os.environ.get("use_mkl")}

    def run(fn):
        def go():
            out = fn()
            out.sync()
            return out
        return go

    with jt.no_grad():
        if "unet" in parts:
            from jstyle.models.unet_2d_condition import UNet2DConditionModel

            unet = load_model(UNet2DConditionModel, folder / "unet")
            x = jt.array(rng.standard_normal((2, 4, latent, latent)).astype(np.float32))
            ctx = jt.array(rng.standard_normal((2, 77, 1024)).astype(np.float32))
            result["unet"] = timed(run(lambda: unet(x, 500, ctx)), repeats)
            del unet
            jt.gc()
        if "vae" in parts:
            from jstyle.models.autoencoder_kl import AutoencoderKL

            vae = load_model(AutoencoderKL, folder / "vae")
            z = jt.array(rng.standard_normal((1, 4, latent, latent)).astype(np.float32))
            result["vae_decode"] = timed(run(lambda: vae.decode(z)), repeats)
            del vae
            jt.gc()
        if "text" in parts:
            from jstyle.models.clip_text import CLIPTextModel

            te = load_model(CLIPTextModel, folder / "text_encoder")
            ids = jt.array(rng.integers(0, 49406, (2, 77)))
            result["text_encode"] = timed(run(lambda: te(ids).last_hidden_state), repeats)
    result["peak_rss_mb"] = peak_rss_mb()
    emit(result)


def sd21_folder() -> Path:
    """$JSTYLE_HOME/bench/sd21-random: the random SD2.1 weights every benchmark shares."""
    return Path(os.environ.get("JSTYLE_HOME", Path.home() / ".cache" / "jstyle")) / "bench" / "sd21-random"


def checker_with_folder(folder: Path) -> str:
    """The checker env's python, after making the random SD2.1 folder with diffusers if it is missing."""
    checker = os.environ.get("JSTYLE_CHECKER_PYTHON")
    if not checker:
        sys.exit("error: source envs/env.sh first (JSTYLE_CHECKER_PYTHON is not set)")
    if not (folder / "DONE").exists():
        print(f"making the random SD2.1 folder at {folder} (once)", flush=True)
        folder.mkdir(parents=True, exist_ok=True)
        subprocess.run([checker, str(HERE / "_diffusers_unet_step.py"), "make", str(folder)], check=True)
    return checker


def collect(cmd: list[str]) -> dict:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH_JSON ")]
    if proc.returncode != 0 or not lines:
        sys.exit(f"error: {' '.join(cmd[:2])} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("BENCH_JSON "):])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--latent", type=int, default=32, help="latent size (32 = 256 px, 64 = 512 px)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--parts", default="unet,vae,text")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads (Jittor+oneDNN uses OpenMP)")
    p.add_argument("--jstyle-side", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    folder = sd21_folder()
    if args.jstyle_side:
        jstyle_side(folder, args.latent, args.repeats, args.parts.split(","))
        return 0
    checker = checker_with_folder(folder)
    common = [str(args.latent), str(args.repeats), args.parts]
    ref = collect([checker, str(HERE / "_diffusers_unet_step.py"), "time", str(folder), *common, str(args.threads)])
    ours = collect([sys.executable, __file__, "--jstyle-side", "--latent", common[0], "--repeats", common[1],
                    "--parts", args.parts])
    print(f"SD2.1 architecture, random weights, latent {args.latent}x{args.latent}, median of {args.repeats}")
    print(f"{'part':<12} {'diffusers s':>12} {'jstyle s':>10} {'ratio':>7} {'jstyle first s':>15}")
    for part in ("unet", "vae_decode", "text_encode"):
        if part in ref and part in ours:
            r, o = ref[part]["median_s"], ours[part]["median_s"]
            print(f"{part:<12} {r:>12.3f} {o:>10.3f} {o / r:>7.2f} {ours[part]['first_s']:>15.1f}")
    print(f"peak RSS MB: diffusers {ref['peak_rss_mb']}, jstyle {ours['peak_rss_mb']} "
          f"(ratio {ours['peak_rss_mb'] / ref['peak_rss_mb']:.2f}); use_mkl={ours.get('use_mkl')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
