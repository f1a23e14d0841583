"""Benchmark: a whole text-to-image generation (text encode, N DDIM steps with CFG batch 2, VAE decode) on
the Stable Diffusion 2.1 architecture with the same random weights, jstyle's StableDiffusion vs
diffusers' StableDiffusionPipeline, each in its own env and process, from the same initial latents.
Prints medians, the jstyle/diffusers ratio and peak memory. Both processes load and warm up, then runs
alternate between them (diffusers, jstyle, then jstyle, diffusers, ...), so that other load on a shared
machine falls on both sides alike; both pipelines are in memory together (about 12 GB at SD 2.1 size).
Both run with glibc's huge-page malloc (GLIBC_TUNABLES=glibc.malloc.hugetlb=1) unless --no-thp.

    bash envs/setup.sh && source envs/env.sh
    $JSTYLE_PYTHON bench/txt2img.py [--latent 32] [--steps 4] [--repeats 3]

Uses the random SD2.1 folder of bench/unet_step.py, completed once with a scheduler config (SD 2.1's
DDIM, v-prediction), a toy-vocabulary tokenizer and model_index.json so both libraries load it whole.
--device cuda --dtype float16: both on the GPU (peak GPU memory per process by nvidia-smi, and each
library's own figure); --json: one `GPU_CHECK {...}` line (bench/gpu_check.sh).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
from _sd21 import GpuSampler, Worker, alternate, child_env, machine_line, memory_of, serve  # noqa: E402
from unet_step import checker_with_folder, device_args, gpu_check_line, sd21_folder  # noqa: E402


def complete_folder(folder: Path) -> None:
    """Add scheduler/, tokenizer/ and model_index.json (taken from a tiny sd2 pipeline) if missing."""
    if (folder / "model_index.json").exists():
        return
    from jstyle.io import atomic_write
    from jstyle.tiny import write_tiny_pipeline

    with tempfile.TemporaryDirectory() as tmp:
        tiny = write_tiny_pipeline(Path(tmp) / "tiny", kind="sd2", seed=0)
        for part in ("scheduler", "tokenizer"):
            if not (folder / part).exists():
                shutil.copytree(tiny / part, folder / part)
        index = json.loads((tiny / "model_index.json").read_text())
        atomic_write(folder / "model_index.json", json.dumps(index, indent=2) + "\n")


def jstyle_side(folder: Path, latent: int, steps: int, device: str = "cpu", dtype: str = "float32") -> None:
    import jittor as jt
    import numpy as np

    from jstyle import load_pipeline
    from jstyle.device import use_device

    use_device(device)
    pipe = load_pipeline(folder, dtype=dtype)
    latents = jt.array(np.random.default_rng(0).standard_normal((1, 4, latent, latent)).astype(dtype))

    def run():
        return pipe.text_to_image("a photo of a dolphin", num_inference_steps=steps, guidance_scale=7.5,
                                  height=8 * latent, width=8 * latent, latents=latents)

    serve({"txt2img": run})


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--latent", type=int, default=32, help="latent size (32 = 256 px, 64 = 512 px)")
    p.add_argument("--steps", type=int, default=4, help="DDIM steps")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per side (alternating)")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads")
    p.add_argument("--no-thp", action="store_true", help="both sides without huge-page malloc")
    device_args(p)
    p.add_argument("--jstyle-side", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    folder = sd21_folder()
    if args.jstyle_side:
        jstyle_side(folder, args.latent, args.steps, args.device, args.dtype)
        return 0
    checker = checker_with_folder(folder)
    complete_folder(folder)
    common, env = [str(args.latent), str(args.steps)], child_env(not args.no_thp)
    sampler = GpuSampler().start() if args.device == "cuda" else None
    workers = {
        "diffusers": Worker([checker, str(HERE / "_diffusers_txt2img.py"), str(folder), *common, str(args.threads),
                             args.device, args.dtype], env),
        "jstyle": Worker([sys.executable, __file__, "--jstyle-side", "--latent", common[0], "--steps", common[1],
                          "--device", args.device, "--dtype", args.dtype], env),
    }
    res = alternate(workers, ["txt2img"], args.repeats)
    pids = {side: w.proc.pid for side, w in workers.items()}
    peaks = {side: w.close() for side, w in workers.items()}
    memory = {}
    if sampler is not None:
        memory = {"gpu": sampler.stop(), **{side: memory_of(workers[side].final, sampler, pid)
                                            for side, pid in pids.items()}}
    r, o = res["diffusers"]["txt2img"]["median_s"], res["jstyle"]["txt2img"]["median_s"]
    print(machine_line(args.threads))
    print(f"SD2.1 architecture, random weights, {8 * args.latent}x{8 * args.latent} px, {args.device} {args.dtype}, "
          f"{args.steps} DDIM steps, "
          f"CFG 7.5, median of {args.repeats} alternating runs per side")
    print(f"txt2img: diffusers {r:.2f} s, jstyle {o:.2f} s, ratio {o / r:.2f} "
          f"(jstyle first run {res['jstyle']['txt2img']['first_s']:.1f} s, compiles included)")
    print(f"peak RSS MB: diffusers {peaks['diffusers']}, jstyle {peaks['jstyle']} "
          f"(ratio {peaks['jstyle'] / peaks['diffusers']:.2f}); use_mkl={os.environ.get('use_mkl')}, "
          f"GLIBC_TUNABLES={env['GLIBC_TUNABLES'] or '(none)'}")
    if memory:
        print(f"GPU memory MiB: {json.dumps(memory)}")
    if args.json:
        gpu_check_line({"bench": "txt2img", "device": args.device, "dtype": args.dtype, "latent": args.latent,
                        "steps": args.steps, "diffusers_s": r, "jstyle_s": o, "ratio": round(o / r, 3),
                        "jstyle_first_s": res["jstyle"]["txt2img"]["first_s"],
                        "diffusers_first_s": res["diffusers"]["txt2img"]["first_s"], "peak_rss_mb": peaks,
                        **({"memory": memory} if memory else {})})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
