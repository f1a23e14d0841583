"""Which modules to tune: train one style's LoRA with each target set (UNet / + text encoder / + VAE), each
in its own process, and write a table of final loss, time per step, peak memory and LoRA file size.

    source envs/env.sh
    $JSTYLE_PYTHON scripts/ablate_lora_targets.py --model SD_DIR --style-dir data/00 --steps 200 --out ablation/
    $JSTYLE_PYTHON scripts/ablate_lora_targets.py --tiny --style-dir demo/data/00 --steps 20 --out /tmp/abl

Writes <out>/ablation.md and <out>/ablation.csv (atomically); each variant's LoRA and train_log.json
stay in <out>/<variant>/. Final loss = mean of the last 10% of steps (the loss is noisy per step).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VARIANTS = {
    "unet": {},
    "unet+text": {"text_encoder_targets": ["q_proj", "k_proj", "v_proj", "out_proj"]},
    "unet+text+vae": {"text_encoder_targets": ["q_proj", "k_proj", "v_proj", "out_proj"],
                      "vae_targets": ["to_q", "to_k", "to_v"]},
}


def train_one(model: str, settings: dict) -> None:
    """Inside the variant's process: train, then print its peak RSS."""
    import resource

    from jstyle.train_lora import train_lora
    from jstyle.training import preset

    train_lora(preset("baseline", **settings), model=model)
    print("PEAK_RSS_MB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def run_variant(name: str, args: argparse.Namespace, model: str) -> dict:
    out = args.out / name
    settings = {"style_dir": str(args.style_dir), "output_dir": str(out), "max_train_steps": args.steps,
                "resolution": args.resolution, "progress": False, **VARIANTS[name]}
    proc = subprocess.run([sys.executable, __file__, "--one", json.dumps(settings), "--model", model],
                          capture_output=True, text=True)
    peak = [ln.split()[1] for ln in proc.stdout.splitlines() if ln.startswith("PEAK_RSS_MB")]
    if proc.returncode != 0 or not peak:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise SystemExit(f"error: variant {name} failed: {last}")
    log = json.loads((out / "train_log.json").read_text())
    losses = [s["loss"] for s in log["steps"]]
    tail = losses[-max(1, len(losses) // 10):]
    times = [s["time_s"] for s in log["steps"][1:]] or [log["steps"][0]["time_s"]]
    lora = out / "pytorch_lora_weights.safetensors"
    return {"variant": name, "final_loss": round(statistics.mean(tail), 5),
            "s_per_step": round(statistics.median(times), 3), "peak_rss_mb": round(float(peak[0])),
            "lora_kb": round(lora.stat().st_size / 1024, 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="diffusers Stable Diffusion folder")
    p.add_argument("--tiny", action="store_true", help="use a tiny random SD2-like model (a quick check)")
    p.add_argument("--style-dir", type=Path, default=ROOT / "demo" / "data" / "00")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--resolution", type=int, default=512)
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list of {', '.join(VARIANTS)}")
    p.add_argument("--out", type=Path, default=Path("ablation"))
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        train_one(args.model, json.loads(args.one))
        return 0
    unknown = [v for v in args.variants.split(",") if v not in VARIANTS]
    if unknown or not (args.model or args.tiny):
        p.error(f"unknown variant {unknown[0]}" if unknown else "give --model DIR or --tiny")
    args.out.mkdir(parents=True, exist_ok=True)
    model = args.model
    if args.tiny:
        from jstyle.tiny import write_tiny_pipeline

        model = str(write_tiny_pipeline(args.out / "tiny-model", kind="sd2", seed=0))
    from jstyle.io import atomic_write

    rows = []
    for name in args.variants.split(","):
        rows.append(run_variant(name, args, model))
        print(json.dumps(rows[-1]), flush=True)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(args.out / "ablation.csv", buf.getvalue())
    head = f"LoRA targets on {args.style_dir}, {args.steps} steps at {args.resolution} px, model {model}\n\n"
    table = "| " + " | ".join(rows[0]) + " |\n| " + " | ".join("---" for _ in rows[0]) + " |\n"
    table += "".join("| " + " | ".join(str(v) for v in r.values()) + " |\n" for r in rows)
    atomic_write(args.out / "ablation.md", head + table)
    print(head + table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
