"""Micro-benchmark: each multi-threaded CPU kernel of jstyle.kernels against the Jittor expression it replaces,
on the SD 2.1 UNet's / VAE's / text encoder's shapes at latent 32 (256 px). Forward alone, and forward +
backward (the gradient of sum(y * dy); the attention kernel is inference-only, against the per-head GEMMs).
Calls alternate (expression, kernel, kernel, expression, ...) and medians are printed, so that other load
falls on both alike.

    source envs/env.sh && $JSTYLE_PYTHON bench/kernels.py [--repeats 7] [--only group_norm]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def cases():
    """(name, shape, expression, kernel): the functions take one float32 Var."""
    import math

    import jittor as jt
    import numpy as np

    from jstyle import kernels as K
    from jstyle.models.normalization import group_norm

    def silu(x):  # the Jittor expressions the kernels replace (jstyle.ops, normalization, ...)
        return x * jt.sigmoid(x)

    def gelu(x):
        return 0.5 * x * (1.0 + jt.erf(x * (1.0 / math.sqrt(2.0))))

    def gn(channels: int, act: bool):
        w, b = jt.ones(channels), jt.zeros(channels)

        def ref(x):
            y = group_norm(x, 32, w, b, 1e-6)
            return silu(y) if act else y
        return ref, lambda x: K.group_norm(x, 32, w, b, 1e-6, act)

    def ln(dim: int):
        norm = jt.nn.LayerNorm(dim)
        return norm, lambda x: K.layer_norm(x, norm.weight, norm.bias, 1e-5)

    def geglu_ref(p):
        h, gate = jt.chunk(p, 2, dim=-1)
        return h * gelu(gate)

    def exp_ref(s):
        return jt.exp(s - s.max(dim=-1, keepdims=True).stop_grad())

    def attn(heads: int, n: int, m: int, causal: bool = False):
        """q [2, heads, n, 64] -> the per-head GEMMs vs the fused kernel (inference only), K / V [2, heads, m, 64]."""
        from jstyle.ops import attention_per_head

        k, v = jt.randn(2, heads, m, 64), jt.randn(2, heads, m, 64)
        mask = jt.array(np.triu(np.full((n, m), -1e30, np.float32), 1)[None, None]) if causal else None
        return (lambda q: attention_per_head(q, k, v, 0.125, mask),
                lambda q: K.attention(q, k, v, 0.125, mask))

    return [
        ("group_norm", (2, 1280, 8, 8), *gn(1280, False)),
        ("group_norm", (2, 320, 32, 32), *gn(320, False)),
        ("group_norm+silu", (2, 320, 32, 32), *gn(320, True)),
        ("group_norm+silu", (2, 640, 16, 16), *gn(640, True)),
        ("group_norm+silu", (1, 512, 256, 256), *gn(512, True)),
        ("layer_norm", (2, 1024, 320), *ln(320)),
        ("layer_norm", (2, 77, 1024), *ln(1024)),
        ("geglu", (2, 1024, 2560), geglu_ref, K.geglu),
        ("exp_shifted", (1024, 1024), exp_ref, K.exp_shifted),
        ("exp_shifted", (1024, 77), exp_ref, K.exp_shifted),
        ("exp_shifted", (4096, 4096), exp_ref, K.exp_shifted),
        ("attention", (2, 16, 77, 64), *attn(16, 77, 77, causal=True)),  # the text encoder's (CLIP causal)
        ("attention", (2, 20, 64, 64), *attn(20, 64, 64)),  # the UNet's at latent 32: self, cross
        ("attention", (2, 10, 256, 64), *attn(10, 256, 77)),
        ("attention", (2, 10, 256, 64), *attn(10, 256, 256)),
        ("attention", (2, 5, 1024, 64), *attn(5, 1024, 77)),
    ]


def fwd(f, x, dy) -> None:
    f(x).sync()


def both(f, x, dy) -> None:
    import jittor as jt

    jt.grad((f(x) * dy).sum(), x).sync()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--only", default="", help="run the cases whose name starts with this")
    p.add_argument("--no-backward", action="store_true")
    p.add_argument("--parallel-min", type=int, default=None,
                   help="jstyle.kernels.PARALLEL_MIN for this run (elements below which a loop stays on one thread)")
    args = p.parse_args()
    import jittor as jt
    import numpy as np

    from jstyle import kernels

    if args.parallel_min is not None:
        kernels.PARALLEL_MIN = args.parallel_min
    rng = np.random.default_rng(0)
    print(f"PARALLEL_MIN {kernels.PARALLEL_MIN}; {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.2f}; medians of {args.repeats} (ms)")
    print(f"{'case':<18}{'shape':<22}{'fwd expr':>10}{'fwd kern':>10}{'fwd x':>7}{'f+b expr':>10}{'f+b kern':>10}"
          f"{'f+b x':>7}")
    for name, shape, ref, kern in cases():
        if not name.startswith(args.only):
            continue
        x = jt.array(rng.standard_normal(shape).astype(np.float32))
        dy = jt.array(rng.standard_normal(shape if name != "geglu" else (*shape[:-1], shape[-1] // 2))
                      .astype(np.float32))
        jt.sync_all(True)

        row = []
        for run in (fwd,) if args.no_backward or name == "attention" else (fwd, both):  # attention: inference
            times = {ref: [], kern: []}
            run(ref, x, dy), run(kern, x, dy)  # compile
            for i in range(args.repeats):
                for f in (ref, kern) if i % 2 == 0 else (kern, ref):
                    t0 = time.perf_counter()
                    run(f, x, dy)
                    times[f].append(time.perf_counter() - t0)
            a, b = (1e3 * statistics.median(times[f]) for f in (ref, kern))
            row += [f"{a:10.2f}", f"{b:10.2f}", f"{a / b:7.2f}"]
        print(f"{name:<18}{str(shape):<22}" + "".join(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
