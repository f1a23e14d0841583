"""Benchmark the checker CLI on a synthetic submission with random weights.

    python bench/checker.py [--styles 15] [--images 25] [--refs 10] [--size 512] [--device auto]

Generates the data set (seeded), runs ``python -m checker --random-weights`` as a child process
and reports wall time, the child's peak RSS (and CUDA peak memory when on a GPU) and the
per-metric time split from result.json. The original checker took about 350 s on a GPU for 15
styles. Prints a JSON line last, so CI logs can be parsed.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from checker.synthetic import make_synthetic  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--styles", type=int, default=15)
    p.add_argument("--images", type=int, default=25)
    p.add_argument("--refs", type=int, default=10)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--mode", default="official")
    p.add_argument("--workdir", type=Path, default=None, help="keep data and results here (default: a temp dir)")
    a = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        work = a.workdir or Path(tmp)
        t0 = time.perf_counter()
        data, sub = make_synthetic(work, a.styles, a.images, a.refs, a.size, seed=0)
        t_data = time.perf_counter() - t0
        cmd = [sys.executable, "-m", "checker", "--submission", str(sub), "--data", str(data),
               "--out", str(work / "result.json"), "--random-weights", "--device", a.device,
               "--batch-size", str(a.batch_size), "--mode", a.mode]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            print(proc.stdout, proc.stderr, sep="\n", file=sys.stderr)
            return proc.returncode
        peak_rss_gib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # KiB -> GiB
        res = json.loads((work / "result.json").read_text())
    print(proc.stdout)
    summary = {
        "styles": a.styles, "images_per_style": a.images, "refs_per_style": a.refs, "size": a.size,
        "device": res["environment"]["device"], "wall_s": round(wall, 1), "data_gen_s": round(t_data, 1),
        "peak_rss_gib": round(peak_rss_gib, 2), "cuda_peak_gib": res["environment"].get("cuda_peak_gib"),
        "timing_s": res["timing_s"], "final_score_random": res["final_score"],
    }
    print(f"bench: {a.styles}x{a.images} (+{a.refs} refs) at {a.size}px on {summary['device']}: "
          f"wall {wall:.1f}s, peak RSS {peak_rss_gib:.2f} GiB (random weights; scores meaningless)")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
