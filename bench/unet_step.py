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
--device cuda --dtype float16: both sides on the GPU (peak GPU memory: nvidia-smi per process, plus each
library's own figure); --json prints one `GPU_CHECK {...}` line of the figures (bench/gpu_check.sh).
JSTYLE_BENCH_SD21=DIR uses DIR as the random SD2.1 folder.
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
from _sd21 import GpuSampler, Worker, alternate, child_env, machine_line, memory_of, serve  # noqa: E402

PARTS = {"unet": "unet", "vae": "vae_decode", "text": "text_encode"}


def jstyle_side(folder: Path, latent: int, parts: list[str], device: str = "cpu", dtype: str = "float32") -> None:
    import jittor as jt
    import numpy as np

    sys.path.insert(0, str(HERE.parent))
    from jstyle.device import use_device
    from jstyle.loading import load_model

    use_device(device)
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

        unet = load_model(UNet2DConditionModel, folder / "unet", dtype=dtype)
        x = jt.array(rng.standard_normal((2, 4, latent, latent)).astype(dtype))
        ctx = jt.array(rng.standard_normal((2, 77, 1024)).astype(dtype))
        tasks["unet"] = synced(lambda: unet(x, 500, ctx))
    if "vae" in parts:
        from jstyle.models.autoencoder_kl import AutoencoderKL

        vae = load_model(AutoencoderKL, folder / "vae", dtype=dtype)
        z = jt.array(rng.standard_normal((1, 4, latent, latent)).astype(dtype))
        tasks["vae_decode"] = synced(lambda: vae.decode(z))
    if "text" in parts:
        from jstyle.models.clip_text import CLIPTextModel

        te = load_model(CLIPTextModel, folder / "text_encoder", dtype=dtype)
        ids = jt.array(rng.integers(0, 49406, (2, 77)))
        tasks["text_encode"] = synced(lambda: te(ids).last_hidden_state)
    serve(tasks)


def sd21_folder() -> Path:
    """$JSTYLE_HOME/bench/sd21-random (or $JSTYLE_BENCH_SD21): the random SD2.1 weights every benchmark shares."""
    if os.environ.get("JSTYLE_BENCH_SD21"):
        return Path(os.environ["JSTYLE_BENCH_SD21"])
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


def collect(cmd: list[str], sampler: GpuSampler | None = None) -> dict:
    """Run a one-shot benchmark process; its last BENCH_JSON line (used by train_step / methods_memory).
    With a running `sampler`, adds the process's peak GPU memory seen by nvidia-smi (gpu_mb_nvidia_smi)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stdout, stderr = proc.communicate()
    lines = [ln for ln in stdout.splitlines() if ln.startswith("BENCH_JSON ")]
    if proc.returncode != 0 or not lines:
        sys.exit(f"error: {' '.join(cmd[:2])} failed (exit {proc.returncode}):\n{stderr[-3000:]}")
    result = json.loads(lines[-1][len("BENCH_JSON "):])
    if sampler is not None and sampler.peak_of(proc.pid) is not None:
        result["gpu_mb_nvidia_smi"] = sampler.peak_of(proc.pid)
    return result


def device_args(p: argparse.ArgumentParser) -> None:
    """--device, --dtype and --json, shared by the SD2.1 benchmarks."""
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="both sides run here")
    p.add_argument("--dtype", choices=("float32", "float16"), default="float32", help="both sides' weights")
    p.add_argument("--json", action="store_true", help="also print one `GPU_CHECK {...}` line of the figures")


def gpu_check_line(result: dict) -> None:
    """The --json summary line bench/gpu_check.sh collects."""
    print("GPU_CHECK " + json.dumps(result), flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--latent", type=int, default=32, help="latent size (32 = 256 px, 64 = 512 px)")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per side and part (alternating)")
    p.add_argument("--parts", default="unet,vae,text")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads (Jittor+oneDNN uses OpenMP)")
    p.add_argument("--no-thp", action="store_true", help="both sides without huge-page malloc")
    device_args(p)
    p.add_argument("--jstyle-side", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    parts = args.parts.split(",")
    if unknown := sorted(set(parts) - set(PARTS)):
        p.error(f"unknown --parts {', '.join(unknown)}; use some of {', '.join(PARTS)}")
    folder = sd21_folder()
    if args.jstyle_side:
        jstyle_side(folder, args.latent, parts, args.device, args.dtype)
        return 0
    checker = checker_with_folder(folder)
    rows, peaks, env = [], {"diffusers": 0.0, "jstyle": 0.0}, child_env(not args.no_thp)
    gpu: dict[str, dict] = {}
    for part in parts:  # one pair of processes per part: each holds one model at a time
        sampler = GpuSampler().start() if args.device == "cuda" else None
        workers = {
            "diffusers": Worker([checker, str(HERE / "_diffusers_unet_step.py"), "serve", str(folder),
                                 str(args.latent), part, str(args.threads), args.device, args.dtype], env),
            "jstyle": Worker([sys.executable, __file__, "--jstyle-side", "--latent", str(args.latent),
                              "--parts", part, "--device", args.device, "--dtype", args.dtype], env),
        }
        res = alternate(workers, [PARTS[part]], args.repeats)
        pids = {side: w.proc.pid for side, w in workers.items()}
        for side, w in workers.items():
            peaks[side] = max(peaks[side], w.close())
        if sampler is not None:
            gpu[PARTS[part]] = {"gpu": sampler.stop(), **{side: memory_of(workers[side].final, sampler, pid)
                                                          for side, pid in pids.items()}}
        rows.append((PARTS[part], res["diffusers"][PARTS[part]], res["jstyle"][PARTS[part]]))
    print(machine_line(args.threads))
    print(f"SD2.1 architecture, random weights, latent {args.latent}x{args.latent}, {args.device} {args.dtype}, "
          f"median of {args.repeats} alternating calls per side")
    print(f"{'part':<12} {'diffusers s':>12} {'jstyle s':>10} {'ratio':>7} {'jstyle first s':>15}")
    for name, r, o in rows:
        print(f"{name:<12} {r['median_s']:>12.3f} {o['median_s']:>10.3f} {o['median_s'] / r['median_s']:>7.2f} "
              f"{o['first_s']:>15.1f}")
    print(f"peak RSS MB (largest part): diffusers {peaks['diffusers']}, jstyle {peaks['jstyle']} "
          f"(ratio {peaks['jstyle'] / peaks['diffusers']:.2f}); use_mkl={os.environ.get('use_mkl')}, "
          f"GLIBC_TUNABLES={env['GLIBC_TUNABLES'] or '(none)'}")
    for name, mem in gpu.items():
        print(f"GPU memory MiB, {name}: {json.dumps(mem)}")
    if args.json:
        gpu_check_line({"bench": "unet_step", "device": args.device, "dtype": args.dtype, "latent": args.latent,
                        "parts": {n: {"diffusers_s": r["median_s"], "jstyle_s": o["median_s"],
                                      "jstyle_first_s": o["first_s"], "diffusers_first_s": r["first_s"],
                                      "ratio": round(o["median_s"] / r["median_s"], 3), "memory": gpu.get(n, {})}
                                  for n, r, o in rows},
                        "peak_rss_mb": peaks})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
