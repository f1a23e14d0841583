"""Benchmark: one UNet step (CFG batch 2), one VAE decode, one text encode on the Stable Diffusion 2.1
architecture with the same random weights, jstyle (Jittor) vs diffusers (PyTorch), each in its own env
and process. Prints medians, the jstyle/diffusers time ratio and peak memory.

    bash envs/setup.sh && source envs/env.sh
    $JSTYLE_PYTHON bench/unet_step.py [--latent 32] [--repeats 5] [--parts unet,vae,text]

Per part, both processes load their model and warm up, then calls alternate between them (diffusers,
jstyle, then jstyle, diffusers, ...) so that other load on a shared machine falls on both sides alike.
Both run with glibc's huge-page malloc (GLIBC_TUNABLES=glibc.malloc.hugetlb=1) unless --no-thp.
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
from _sd21 import Worker, alternate, child_env, serve  # noqa: E402

PARTS = {"unet": "unet", "vae": "vae_decode", "text": "text_encode"}


def jstyle_side(folder: Path, latent: int, parts: list[str]) -> None:
    import jittor as jt
    import numpy as np

    sys.path.insert(0, str(HERE.parent))
    from jstyle.loading import load_model

    jt.flags.no_grad = 1
    rng = np.random.default_rng(0)
    tasks = {}

    def synced(fn):
        def go():
            out = fn()
            out.sync()
            return out
        return go

    if "unet" in parts:
        from jstyle.models.unet_2d_condition import UNet2DConditionModel

        unet = load_model(UNet2DConditionModel, folder / "unet")
        x = jt.array(rng.standard_normal((2, 4, latent, latent)).astype(np.float32))
        ctx = jt.array(rng.standard_normal((2, 77, 1024)).astype(np.float32))
        tasks["unet"] = synced(lambda: unet(x, 500, ctx))
    if "vae" in parts:
        from jstyle.models.autoencoder_kl import AutoencoderKL

        vae = load_model(AutoencoderKL, folder / "vae")
        z = jt.array(rng.standard_normal((1, 4, latent, latent)).astype(np.float32))
        tasks["vae_decode"] = synced(lambda: vae.decode(z))
    if "text" in parts:
        from jstyle.models.clip_text import CLIPTextModel

        te = load_model(CLIPTextModel, folder / "text_encoder")
        ids = jt.array(rng.integers(0, 49406, (2, 77)))
        tasks["text_encode"] = synced(lambda: te(ids).last_hidden_state)
    serve(tasks)


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
    """Run a one-shot benchmark process; its last BENCH_JSON line (used by train_step / methods_memory)."""
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH_JSON ")]
    if proc.returncode != 0 or not lines:
        sys.exit(f"error: {' '.join(cmd[:2])} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("BENCH_JSON "):])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--latent", type=int, default=32, help="latent size (32 = 256 px, 64 = 512 px)")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per side and part (alternating)")
    p.add_argument("--parts", default="unet,vae,text")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads (Jittor+oneDNN uses OpenMP)")
    p.add_argument("--no-thp", action="store_true", help="both sides without huge-page malloc")
    p.add_argument("--jstyle-side", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    parts = args.parts.split(",")
    if unknown := sorted(set(parts) - set(PARTS)):
        p.error(f"unknown --parts {', '.join(unknown)}; use some of {', '.join(PARTS)}")
    folder = sd21_folder()
    if args.jstyle_side:
        jstyle_side(folder, args.latent, parts)
        return 0
    checker = checker_with_folder(folder)
    rows, peaks, env = [], {"diffusers": 0.0, "jstyle": 0.0}, child_env(not args.no_thp)
    for part in parts:  # one pair of processes per part: each holds one model at a time
        workers = {
            "diffusers": Worker([checker, str(HERE / "_diffusers_unet_step.py"), "serve", str(folder),
                                 str(args.latent), part, str(args.threads)], env),
            "jstyle": Worker([sys.executable, __file__, "--jstyle-side", "--latent", str(args.latent),
                              "--parts", part], env),
        }
        res = alternate(workers, [PARTS[part]], args.repeats)
        for side, w in workers.items():
            peaks[side] = max(peaks[side], w.close())
        rows.append((PARTS[part], res["diffusers"][PARTS[part]], res["jstyle"][PARTS[part]]))
    print(f"SD2.1 architecture, random weights, latent {args.latent}x{args.latent}, median of {args.repeats} "
          "alternating calls per side")
    print(f"{'part':<12} {'diffusers s':>12} {'jstyle s':>10} {'ratio':>7} {'jstyle first s':>15}")
    for name, r, o in rows:
        print(f"{name:<12} {r['median_s']:>12.3f} {o['median_s']:>10.3f} {o['median_s'] / r['median_s']:>7.2f} "
              f"{o['first_s']:>15.1f}")
    print(f"peak RSS MB (largest part): diffusers {peaks['diffusers']}, jstyle {peaks['jstyle']} "
          f"(ratio {peaks['jstyle'] / peaks['diffusers']:.2f}); use_mkl={os.environ.get('use_mkl')}, "
          f"GLIBC_TUNABLES={env['GLIBC_TUNABLES'] or '(none)'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
