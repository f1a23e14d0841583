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
import threading
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

# JSTYLE_BENCH_TINY=1 (bench/gpu_check.sh --dry-run): the same architecture, narrow and shallow, so that the
# plumbing runs on a CPU in seconds (the text encoder keeps SD 2.1's width: the UNet's context is 1024 wide).
TINY = dict(unet=dict(block_out_channels=(32, 64, 64, 64), attention_head_dim=(2, 4, 4, 4), sample_size=8),
            vae=dict(block_out_channels=(32, 32, 32, 32), layers_per_block=1, sample_size=64),
            text=dict(num_hidden_layers=2, intermediate_size=1024))


def configs(tiny: bool = False) -> tuple[dict, dict, dict]:
    """(UNET, VAE, TEXT) configs: SD 2.1's, or its narrow and shallow variant."""
    if not tiny:
        return UNET, VAE, TEXT
    return {**UNET, **TINY["unet"]}, {**VAE, **TINY["vae"]}, {**TEXT, **TINY["text"]}


ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16")


# What caps torch's own CPU kernels at AVX2 (its oneDNN reads ONEDNN_MAX_CPU_ISA like jstyle's).
TORCH_AVX2_CAPS = {"MKL_ENABLE_INSTRUCTIONS": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}


def machine_line(torch_threads: int | None = None) -> str:
    """The CPU model, the ISA flags that matter, oneDNN's version and the thread counts: a figure's context."""
    info: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                info.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    flags = set(info.get("flags", "").split())
    isa = ",".join(f for f in ISA_FLAGS if f in flags) or "none of " + ",".join(ISA_FLAGS)
    dnnl = "not found"
    wired = os.environ.get("JSTYLE_ONEDNN_DIR", "")  # envs/env.sh: the oneDNN Jittor's ops were built against
    for include in (os.path.join(wired, "include"), "/usr/include"):
        try:  # its headers name the patch level too
            with open(os.path.join(include, "oneapi", "dnnl", "dnnl_version.h")) as f:
                parts = {w[1]: w[2] for w in (line.split() for line in f) if len(w) == 3 and w[0] == "#define"}
            dnnl = ".".join(parts[f"DNNL_VERSION_{k}"] for k in ("MAJOR", "MINOR", "PATCH"))
            dnnl += " (pip)" if os.path.realpath(include) != "/usr/include" else " (system)"
            break
        except (OSError, KeyError):
            continue
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA")
    if cap:  # both sides' oneDNN (and torch's MKL / ATen where their own caps are set) run these kernels
        dnnl += f", capped at {cap}"
        for var, value in TORCH_AVX2_CAPS.items():
            dnnl += f", {var}={os.environ.get(var, value if cap.upper() == 'AVX2' else 'unset')}"
    threads = f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, cores={os.cpu_count()}"
    if torch_threads is not None:
        threads += f", torch threads={torch_threads}"
    model = info.get("model name", "unknown CPU")
    family = f"family {info.get('cpu family', '?')} model {info.get('model', '?')}"
    return f"machine: {model} ({family}), ISA {isa}, libdnnl {dnnl}, {threads}"


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


def device_memory_mb() -> dict[str, float]:
    """This process's GPU memory as its own library reports it (empty on CPU): PyTorch's peak of allocated
    tensors (torch.cuda.max_memory_allocated) and reserved; Jittor 1.3.11 keeps no peak, so its allocator's
    use now (jt.get_mem_info().total_cuda_used, read after the timed calls). Looks only at modules imported."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        return {"torch_max_allocated_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1),
                "torch_max_reserved_mb": round(torch.cuda.max_memory_reserved() / 2**20, 1)}
    jt = sys.modules.get("jittor")
    if jt is not None and jt.flags.use_cuda:
        return {"jittor_cuda_used_mb": round(jt.get_mem_info().total_cuda_used / 2**20, 1)}
    return {}


class GpuSampler:
    """Peak GPU memory of processes by polling nvidia-smi (every `period` s, in a thread): the same measure
    for both sides (what the driver charges: CUDA context, caching allocators included). Per pid where
    nvidia-smi reports pids of this namespace, and the whole GPU's used memory in any case."""

    def __init__(self, period: float = 0.2):
        self.period, self.per_pid, self.gpu_max, self.gpu_base = period, {}, 0.0, None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def _query(what: str) -> list[list[str]]:
        try:
            out = subprocess.run(["nvidia-smi", f"--query-{what}", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            return []
        return [[c.strip() for c in line.split(",")] for line in out.splitlines() if line.strip()]

    def _poll(self) -> None:
        for pid, used in self._query("compute-apps=pid,used_memory"):
            if pid.isdigit() and used.isdigit():
                self.per_pid[int(pid)] = max(self.per_pid.get(int(pid), 0.0), float(used))
        used = sum(float(r[0]) for r in self._query("gpu=memory.used") if r and r[0].isdigit())
        self.gpu_base = used if self.gpu_base is None else self.gpu_base
        self.gpu_max = max(self.gpu_max, used)

    def start(self) -> GpuSampler:
        """Start polling (does nothing without nvidia-smi)."""
        if subprocess.run(["sh", "-c", "command -v nvidia-smi"], capture_output=True).returncode != 0:
            return self
        self._poll()

        def loop() -> None:
            while not self._stop.wait(self.period):
                self._poll()
        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> dict[str, float]:
        """Stop; {'gpu_used_max_mb', 'gpu_used_before_mb'} (MiB) or {} without nvidia-smi."""
        if self._thread is None:
            return {}
        self._stop.set()
        self._thread.join()
        return {"gpu_used_max_mb": self.gpu_max, "gpu_used_before_mb": self.gpu_base or 0.0}

    def peak_of(self, pid: int) -> float | None:
        """The largest used_memory (MiB) nvidia-smi reported for `pid`, None when it never listed it."""
        return self.per_pid.get(pid)


MEMORY_KEYS = ("gpu_mb_nvidia_smi", "torch_max_allocated_mb", "torch_max_reserved_mb", "jittor_cuda_used_mb")


def memory_of(result: dict, sampler: GpuSampler | None = None, pid: int | None = None) -> dict:
    """The GPU memory figures of one side's result (MEMORY_KEYS), plus nvidia-smi's peak for `pid`."""
    out = {k: result[k] for k in MEMORY_KEYS if k in result}
    if sampler is not None and pid is not None:
        out["gpu_mb_nvidia_smi"] = sampler.peak_of(pid)
    return out


def emit(result: dict) -> None:
    """One BENCH_JSON line on stdout (the driver reads it)."""
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
    emit({"peak_rss_mb": peak_rss_mb(), **device_memory_mb()})


# glibc's malloc backs large blocks with transparent huge pages (kernel THP mode "madvise"): both sides run
# 15-20% faster and, above all, steadily (without it PyTorch lands at random in a fast or a slow mode).
THP_TUNABLE = "glibc.malloc.hugetlb=1"


def child_env(thp: bool) -> dict[str, str]:
    """The environment of both sides' processes: the same for both, with or without huge pages; oneDNN capped at
    AVX2 (ONEDNN_MAX_CPU_ISA=AVX2) caps torch's MKL and ATen kernels too, unless those are set."""
    env = dict(os.environ)
    if env.get("ONEDNN_MAX_CPU_ISA", "").upper() == "AVX2":  # torch's GEMMs (MKL) and ATen kernels capped alike
        for var, value in TORCH_AVX2_CAPS.items():
            env.setdefault(var, value)
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
        self.final: dict = {}

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
        self.final = self._read()
        peak = self.final["peak_rss_mb"]
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
