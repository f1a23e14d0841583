"""Benchmark: one LoRA training step (UNet forward + backward + AdamW; rank 4 on to_q/to_k/to_v/to_out.0,
batch 1) on the Stable Diffusion 2.1 architecture with the same random weights, jstyle (Jittor) vs
diffusers + peft (PyTorch), each in its own env and process. Prints medians, the ratio and peak memory.

    bash envs/setup.sh && source envs/env.sh
    $JSTYLE_PYTHON bench/train_step.py [--latent 32] [--repeats 3] [--gradient-checkpointing]

Uses the random SD2.1 folder of bench/unet_step.py (made once under $JSTYLE_HOME/bench/).
The issue's target: ratio <= 1.5 on CPU, <= 1.0 on a GPU.
--device cuda --dtype float16: both on the GPU, frozen base in float16, LoRA weights, AdamW and loss in
float32 (jstyle's mixed precision; diffusers' training scripts' cast_training_params), no loss scaling;
peak GPU memory per process by nvidia-smi and each library's own figure; --json: one `GPU_CHECK` line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _sd21 import GpuSampler, device_memory_mb, emit, machine_line, memory_of, peak_rss_mb, timed  # noqa: E402
from unet_step import checker_with_folder, collect, device_args, gpu_check_line, sd21_folder  # noqa: E402


def jstyle_side(folder: Path, latent: int, repeats: int, checkpointing: bool, device: str = "cpu",
                dtype: str = "float32") -> None:
    import jittor as jt
    import numpy as np

    sys.path.insert(0, str(HERE.parent))
    from jstyle import lora as L
    from jstyle.device import use_device
    from jstyle.loading import load_model
    from jstyle.models.unet_2d_condition import UNet2DConditionModel
    from jstyle.training.checkpointing import enable_gradient_checkpointing, run_backward
    from jstyle.training.freeze import freeze_except
    from jstyle.training.optim import AdamW

    use_device(device)
    rng = np.random.default_rng(0)
    unet = load_model(UNet2DConditionModel, folder / "unet", dtype=dtype)
    L.inject_lora(unet, ["to_q", "to_k", "to_v", "to_out.0"], rank=4, alpha=4, rng=np.random.default_rng(1))
    params = L.lora_parameters(unet)
    freeze_except(unet, params)  # as LoRATrainer: the base stays frozen through unet.train()
    if checkpointing:
        enable_gradient_checkpointing(unet)
    unet.train()
    opt = AdamW(params, lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
    x = jt.array(rng.standard_normal((1, 4, latent, latent)).astype(dtype))
    ctx = jt.array(rng.standard_normal((1, 77, 1024)).astype(dtype))
    target = jt.array(rng.standard_normal((1, 4, latent, latent)).astype(np.float32))

    def step():
        loss = ((unet(x, 500, ctx).float32() - target) ** 2).mean()
        with jt.no_grad():  # as LoRATrainer: first-order gradients only
            grads = jt.grad(loss, params)
        run_backward(unet, grads)  # with checkpointing: block by block, as LoRATrainer does
        opt.step(grads)
        jt.sync(params)
        return loss

    result = {"side": "jstyle", "jittor": jt.__version__, "use_mkl": os.environ.get("use_mkl"),
              "lora_params": int(sum(p.numel() for p in params)), "train_step": timed(step, repeats)}
    result["peak_rss_mb"] = peak_rss_mb()
    result.update(device_memory_mb())
    emit(result)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--latent", type=int, default=32, help="latent size (32 = 256 px, 64 = 512 px)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads")
    p.add_argument("--gradient-checkpointing", action="store_true", help="both sides recompute block activations")
    device_args(p)
    p.add_argument("--jstyle-side", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    folder = sd21_folder()
    if args.jstyle_side:
        jstyle_side(folder, args.latent, args.repeats, args.gradient_checkpointing, args.device, args.dtype)
        return 0
    checker = checker_with_folder(folder)
    sampler = GpuSampler().start() if args.device == "cuda" else None
    ref = collect([checker, str(HERE / "_diffusers_train_step.py"), str(folder), str(args.latent), str(args.repeats),
                   str(args.threads), str(int(args.gradient_checkpointing)), args.device, args.dtype], sampler)
    ours = collect([sys.executable, __file__, "--jstyle-side", "--latent", str(args.latent),
                    "--repeats", str(args.repeats), "--device", args.device, "--dtype", args.dtype]
                   + ["--gradient-checkpointing"] * args.gradient_checkpointing, sampler)
    gpu = sampler.stop() if sampler is not None else {}
    r, o = ref["train_step"]["median_s"], ours["train_step"]["median_s"]
    print(machine_line(args.threads))
    print(f"SD2.1 architecture, random weights, latent {args.latent}x{args.latent}, LoRA rank 4 "
          f"({ours['lora_params']} vs {ref['lora_params']} trainable), median of {args.repeats}, gradient "
          f"checkpointing {'on' if args.gradient_checkpointing else 'off'}")
    print(f"train step: diffusers+peft {r:.3f} s, jstyle {o:.3f} s, ratio {o / r:.2f} "
          f"(jstyle first step {ours['train_step']['first_s']:.1f} s, compiles included)")
    print(f"peak RSS MB: diffusers+peft {ref['peak_rss_mb']}, jstyle {ours['peak_rss_mb']} "
          f"(ratio {ours['peak_rss_mb'] / ref['peak_rss_mb']:.2f}); use_mkl={ours.get('use_mkl')}")
    memory = {"diffusers": memory_of(ref), "jstyle": memory_of(ours)}
    if gpu:
        print(f"GPU memory MiB: {json.dumps({'gpu': gpu, **memory})}")
    if args.json:
        gpu_check_line({"bench": "train_step", "device": args.device, "dtype": args.dtype, "latent": args.latent,
                        "diffusers_s": r, "jstyle_s": o, "ratio": round(o / r, 3),
                        "jstyle_first_s": ours["train_step"]["first_s"],
                        "diffusers_first_s": ref["train_step"]["first_s"],
                        "peak_rss_mb": {"diffusers": ref["peak_rss_mb"], "jstyle": ours["peak_rss_mb"]},
                        "memory": {"gpu": gpu, **memory}})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
