"""What --method auto costs on the demo: wall time and UNet calls against the default method alone, and the
checker's scorer (loaded once) per style against a check.sh call.

    source envs/env.sh
    $JSTYLE_PYTHON bench/auto.py [--styles 00-02] [--json auto.json] [--keep DIR] [-- RUN_ALL FLAGS]

Both runs are run_all --demo (CPU, one worker, in this process; no final check, no package) into fresh folders (a
temp folder, or --keep DIR: DIR/default and DIR/auto stay, and `run_all.sh --demo --method auto --out DIR/auto`
then only scores and packages); a UNet call is one forward of the demo UNet (a CFG step is one call of batch 2;
LoRA training steps count too). Then, on the auto run's submission: the scorer (checker.serve, random weights, all
six metrics) started once, its seconds per style after its first request (the first loads the backbones), against
a `check.sh --styles S` call (which loads them every time). Also: per style, each candidate's histogram
score on the screening prompts, the pick, and the submission's mean against every single candidate's.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _sd21 import machine_line  # noqa: E402


def counted_run(argv: list[str]) -> tuple[float, int]:
    """run_all.main(argv) in this process: (seconds, UNet forward calls)."""
    import jstyle.pipeline
    import run_all

    calls = [0]
    load = jstyle.pipeline.load_pipeline

    def counting_load(*args, **kwargs):  # every pipeline the run loads gets a counting forward wrapper
        pipe = load(*args, **kwargs)

        def count(forward, *a, **kw):
            calls[0] += 1
            return forward(*a, **kw)

        pipe.unet.mid_block.register_forward_wrapper(count)  # one mid block pass per UNet forward
        return pipe

    jstyle.pipeline.load_pipeline = counting_load
    try:
        t0 = time.perf_counter()
        rc = run_all.main(argv)
        seconds = time.perf_counter() - t0
    finally:
        jstyle.pipeline.load_pipeline = load
    if rc != 0:
        raise SystemExit(f"run_all {' '.join(argv)} failed ({rc})")
    return seconds, calls[0]


def picks(selection: dict) -> list[dict]:
    """Per style: each candidate's score, the pick, and whether it is the argmax recomputed here."""
    rows = []
    for style, entry in selection["styles"].items():
        scores = {spec: c["score"] for spec, c in entry["candidates"].items()}
        best = max(scores, key=lambda s: -1e9 if scores[s] is None else scores[s])
        rows.append({"style": style, "scores": scores, "winner": entry["winner"], "argmax": best})
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--styles", default="00-02")
    p.add_argument("--json", type=Path)
    p.add_argument("--keep", type=Path, help="an empty folder for the two runs, kept (default: a temp folder)")
    p.add_argument("run_flags", nargs=argparse.REMAINDER, help="after --: more run_all flags for both runs "
                   "(e.g. --train-steps 20 on a busy machine)")
    args = p.parse_args()
    from jstyle.jobs.workers import keep_running_when_children_die
    from jstyle.scorer import Scorer

    keep_running_when_children_die()
    print(machine_line())
    print("run_all --demo" + "".join(f" {f}" for f in args.run_flags if f != "--"))
    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        if args.keep:
            if args.keep.exists() and any(args.keep.iterdir()):
                raise SystemExit(f"--keep {args.keep}: not empty (the runs must start from nothing to be timed)")
            tmp = str(args.keep)
        extra = [f for f in args.run_flags if f != "--"]
        common = ["--demo", "--styles", args.styles, "--no-check", "--no-package", "--no-progress", *extra]
        default_s, default_calls = counted_run([*common, "--out", f"{tmp}/default"])
        auto_s, auto_calls = counted_run([*common, "--method", "auto", "--out", f"{tmp}/auto"])
        print(f"default method (styleid_dreambooth): {default_s:.0f} s, {default_calls} UNet calls")
        print(f"--method auto:                      {auto_s:.0f} s, {auto_calls} UNet calls "
              f"({auto_s / default_s:.2f}x the time, {auto_calls / default_calls:.2f}x the calls)")
        selection = json.loads(Path(f"{tmp}/auto/selection.json").read_text())
        rows = picks(selection)
        cands = list(rows[0]["scores"])
        print(f"hist per style ({selection['styles'][rows[0]['style']]['prompts'].__len__()} screening prompts):")
        print("style  " + "  ".join(f"{c:>18}" for c in cands) + "  pick")
        for r in rows:
            print(f"{r['style']:<6} " + "  ".join(f"{r['scores'][c]:>18.3f}" for c in cands)
                  + f"  {r['winner']}{'' if r['winner'] == r['argmax'] else ' (NOT the argmax)'}")
        mean = {c: sum(r["scores"][c] for r in rows) / len(rows) for c in cands}
        chosen = sum(r["scores"][r["winner"]] for r in rows) / len(rows)
        print("mean   " + "  ".join(f"{mean[c]:>18.3f}" for c in cands) + f"  {chosen:.3f} (per-style picks)")
        styles = [r["style"] for r in rows]
        scorer = Scorer("cpu", random_weights=True, log=Path(tmp) / "scorer.log")
        t0 = time.perf_counter()
        scorer.score(f"{tmp}/auto", ROOT / "demo" / "data", styles[0])
        first = time.perf_counter() - t0
        per_style = []
        for style in styles:
            t0 = time.perf_counter()
            scorer.score(f"{tmp}/auto", ROOT / "demo" / "data", style)
            per_style.append(time.perf_counter() - t0)
        scorer.close()
        check = []
        for style in styles[:1]:  # each call builds every backbone again: one call shows it
            t0 = time.perf_counter()
            subprocess.run(["bash", str(ROOT / "check.sh"), "--submission", f"{tmp}/auto", "--data",
                            str(ROOT / "demo" / "data"), "--random-weights", "--device", "cpu", "--styles", style,
                            "--out", f"{tmp}/r-{style}.json", "--quiet"], check=True, capture_output=True)
            check.append(time.perf_counter() - t0)
        loaded = sum(per_style) / len(per_style)
        call = sum(check) / len(check)
        print(f"scorer, six metrics (random weights): first request {first:.1f} s (backbones built), then "
              f"{loaded:.2f} s per style; check.sh per style {call:.1f} s ({loaded / call:.3f}x)")
        out = {"default": {"seconds": default_s, "unet_calls": default_calls},
               "auto": {"seconds": auto_s, "unet_calls": auto_calls}, "picks": rows, "mean_hist": mean,
               "chosen_hist": chosen, "scorer_first_s": first, "scorer_per_style_s": per_style,
               "check_sh_per_style_s": check, "machine": machine_line()}
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
