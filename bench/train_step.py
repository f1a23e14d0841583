"""Benchmark: one LoRA training step (UNet forward + backward + AdamW; rank 4 on to_q/to_k/to_v/to_out.0,
batch 1) on the Stable Diffusion 2.1 architecture with the same random weights, jstyle (Jittor) vs
diffusers + peft (PyTorch), each in its own env and process. Prints medians, the ratio and peak memory.

    bash envs/setup.sh && source envs/env.sh
    $JSTYLE_PYTHON bench/train_step.py [--latent 32] [--repeats 3] [--gradient-checkpointing]

Uses the random SD2.1 folder of bench/unet_step.py (made once under $JSTYLE_HOME/bench/).
The issue's target: ratio <= 1.5 on CPU, <= 1.0 on a GPU.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _sd21 import emit, peak_rss_mb, timed  # noqa: E402
from unet_step import checker_with_folder, collect, sd21_folder  # noqa: E402


def jstyle_side(folder: Path, latent: int, repeats: int, checkpointing: bool) -> None:
    import jittor as jt
    import numpy as np

    sys.path.insert(0, str(HERE.parent))
    from jstyle import lora as L
    from jstyle.loading import load_model
    from jstyle.models.unet_2d_condition import UNet2DConditionModel
    from jstyle.training.checkpointing import enable_gradient_checkpointing, run_backward
    from jstyle.training.optim import AdamW

    rng = np.random.default_rng(0)
    unet = load_model(UNet2DConditionModel, folder / "unet")
    L.inject_lora(unet, ["to_q", "to_k", "to_v", "to_out.0"], rank=4, alpha=4, rng=np.random.default_rng(1))
    params = L.lora_parameters(unet)
    ids = {id(p) for p in params}
    for p in unet.parameters():
        if id(p) not in ids:
            p.stop_grad()
    if checkpointing:
        enable_gradient_checkpointing(unet)
    unet.train()
    opt = AdamW(params, lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
    x = jt.array(rng.standard_normal((1, 4, latent, latent)).astype(np.float32))
    ctx = jt.array(rng.standard_normal((1, 77, 1024)).astype(np.float32))
    target = jt.array(rng.standard_normal((1, 4, latent, latent)).astype(np.float32))

    def step():
        loss = ((unet(x, 500, ctx) - target) ** 2).mean()
        grads = jt.grad(loss, params)
        run_backward(unet, grads)  # with checkpointing: block by block, as LoRATrainer does
        opt.step(grads)
        jt.sync(params)
        return loss

    result = {"side": "jstyle", "jittor": jt.__version__, "use_mkl": os.environ.get("use_mkl"),
              "lora_params": int(sum(p.numel() for p in params)), "train_step": timed(step, repeats)}
    result["peak_rss_mb"] = peak_rss_mb()
    emit(result)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--latent", type=int, default=32, help="latent size (32 = 256 px, 64 = 512 px)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads")
    p.add_argument("--gradient-checkpointing", action="store_true", help="both sides recompute block activations")
    p.add_argument("--jstyle-side", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    folder = sd21_folder()
    if args.jstyle_side:
        jstyle_side(folder, args.latent, args.repeats, args.gradient_checkpointing)
        return 0
    checker = checker_with_folder(folder)
    ref = collect([checker, str(HERE / "_diffusers_train_step.py"), str(folder), str(args.latent), str(args.repeats),
                   str(args.threads), str(int(args.gradient_checkpointing))])
    ours = collect([sys.executable, __file__, "--jstyle-side", "--latent", str(args.latent),
                    "--repeats", str(args.repeats)] + ["--gradient-checkpointing"] * args.gradient_checkpointing)
    r, o = ref["train_step"]["median_s"], ours["train_step"]["median_s"]
    print(f"SD2.1 architecture, random weights, latent {args.latent}x{args.latent}, LoRA rank 4 "
          f"({ours['lora_params']} vs {ref['lora_params']} trainable), median of {args.repeats}, gradient "
          f"checkpointing {'on' if args.gradient_checkpointing else 'off'}")
    print(f"train step: diffusers+peft {r:.3f} s, jstyle {o:.3f} s, ratio {o / r:.2f} "
          f"(jstyle first step {ours['train_step']['first_s']:.1f} s, compiles included)")
    print(f"peak RSS MB: diffusers+peft {ref['peak_rss_mb']}, jstyle {ours['peak_rss_mb']} "
          f"(ratio {ours['peak_rss_mb'] / ref['peak_rss_mb']:.2f}); use_mkl={ours.get('use_mkl')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
