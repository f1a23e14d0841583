"""Shared by the benchmarks: the Stable Diffusion 2.1 architecture (random weights) and timing helpers.

Imported by both sides (no torch or jittor import here).
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

UNET = dict(
    sample_size=96, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280), attention_head_dim=(5, 10, 20, 20), cross_attention_dim=1024,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    use_linear_projection=True, upcast_attention=True,
)
VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, sample_size=768,
)
TEXT = dict(
    vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_attention_heads=16, num_hidden_layers=23,
    max_position_embeddings=77, hidden_act="gelu", projection_dim=512, bos_token_id=49406, eos_token_id=49407,
    pad_token_id=0,
)


def timed(fn: Callable[[], object], repeats: int) -> dict[str, float]:
    """Run once to warm up (Jittor compiles here), then `repeats` times; seconds."""
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t0)
    return {"first_s": round(first, 3), "median_s": round(statistics.median(runs), 4), "runs": len(runs)}


def peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def emit(result: dict) -> None:
    print("BENCH_JSON " + json.dumps(result), flush=True)


def serve(tasks: dict[str, Callable[[], object]]) -> None:
    """Worker side of an alternating benchmark: run every task once (warm-up: Jittor compiles here), report
    those times, then time one call of the task named on each stdin line; 'quit' reports the peak RSS."""
    first = {}
    for name, fn in tasks.items():
        t0 = time.perf_counter()
        fn()
        first[name] = round(time.perf_counter() - t0, 3)
    emit({"ready": first})
    for line in sys.stdin:
        name = line.strip()
        if name == "quit":
            break
        t0 = time.perf_counter()
        tasks[name]()
        emit({"task": name, "s": time.perf_counter() - t0})
    emit({"peak_rss_mb": peak_rss_mb()})


# glibc's malloc backs large blocks with transparent huge pages (kernel THP mode "madvise"): both sides run
# 15-20% faster and, above all, steadily (without it PyTorch lands at random in a fast or a slow mode).
THP_TUNABLE = "glibc.malloc.hugetlb=1"


def child_env(thp: bool) -> dict[str, str]:
    """The environment of both sides' processes: the same for both, with or without huge pages."""
    env = dict(os.environ)
    tunables = [t for t in env.get("GLIBC_TUNABLES", "").split(":") if t and not t.startswith("glibc.malloc.hugetlb")]
    env["GLIBC_TUNABLES"] = ":".join(tunables + ([THP_TUNABLE] if thp else []))
    return env


class Worker:
    """Driver side of `serve`: one benchmark process, fed task names one at a time."""

    def __init__(self, cmd: list[str], env: dict[str, str] | None = None):
        self.cmd = cmd
        self.log = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log,
                                     text=True, bufsize=1, env=env)
        self.first = self._read()["ready"]

    def _read(self) -> dict:
        for line in self.proc.stdout:
            if "BENCH_JSON " in line:  # Jittor's compile progress may share the line
                return json.loads(line.split("BENCH_JSON ", 1)[1])
        self.proc.wait()
        self.log.seek(0)
        sys.exit(f"error: {' '.join(self.cmd[:2])} failed (exit {self.proc.returncode}):\n{self.log.read()[-3000:]}")

    def run(self, task: str) -> float:
        self.proc.stdin.write(task + "\n")
        self.proc.stdin.flush()
        return self._read()["s"]

    def close(self) -> float:
        """Stop the worker; its peak RSS in MB."""
        self.proc.stdin.write("quit\n")
        self.proc.stdin.flush()
        peak = self._read()["peak_rss_mb"]
        self.proc.wait()
        self.log.close()
        return peak


def alternate(workers: dict[str, Worker], tasks: list[str], repeats: int) -> dict[str, dict[str, dict]]:
    """Time every task `repeats` times on every worker, interleaved (A B, then B A, ...) so that load from
    other processes on a shared machine falls on both sides alike; medians per worker and task."""
    runs: dict[str, dict[str, list[float]]] = {w: {t: [] for t in tasks} for w in workers}
    names = list(workers)
    for r in range(repeats):
        for task in tasks:
            for w in names if r % 2 == 0 else names[::-1]:
                runs[w][task].append(workers[w].run(task))
    return {w: {t: {"median_s": round(statistics.median(v), 4), "runs": len(v), "first_s": workers[w].first[t]}
                for t, v in per.items()} for w, per in runs.items()}
