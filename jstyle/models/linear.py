"""Linear whose CPU float32 inference is one MKL sgemm with the bias as its C operand.

Jittor's `nn.Linear` runs x W^T through oneDNN's sgemm and adds the bias in a second pass. Where MKL is
installed (`jstyle.mkl`), inference (`jt.no_grad`) in float32 on CPU calls MKL's `cblas_sgemm` instead, threaded
by GNU OpenMP (the runtime Jittor's kernels and oneDNN already use), with C preset to the bias and beta = 1.
Everywhere else (a module in training mode, float16, CUDA, no MKL, `JSTYLE_MKL=0`) it is `jittor.nn.Linear`,
whose parameters and state-dict keys it keeps.
"""

from __future__ import annotations

import jittor as jt
from jittor import nn

from .. import kernels, mkl

__all__ = ["Linear", "linear"]

# in0 = x [M, K], in1 = W [N, K], in2 = b [N] (BIAS); out0 = y [M, N] = x W^T + b  (row-major, W transposed)
_SRC = r"""
const int M = in0_shape0, K = in0_shape1, N = in1_shape0;
float* y = out0_p;
#if BIAS
#pragma omp parallel for schedule(static) if ((long)M * N >= PARALLEL_MIN)
for (int i = 0; i < M; i++)
    for (int j = 0; j < N; j++) y[(long)i * N + j] = in2_p[j];
#endif
cblas_sgemm(101, 111, 112, M, N, K, 1.f, in0_p, K, in1_p, K, BIAS ? 1.f : 0.f, y, N);
"""


def _fast(x: jt.Var, weight: jt.Var, bias: jt.Var | None) -> bool:
    return (jt.flags.no_grad and not jt.flags.use_cuda and x.dtype == "float32" and weight.dtype == "float32"
            and (bias is None or bias.dtype == "float32") and mkl.available())


def linear(x: jt.Var, weight: jt.Var, bias: jt.Var | None = None) -> jt.Var:
    """torch.nn.functional.linear: x [..., K] W[N, K]^T + b; MKL in float32 CPU inference, else jittor's."""
    if not _fast(x, weight, bias):
        return nn.linear(x, weight, bias)
    rows = x.reshape((-1, x.shape[-1]))
    inputs = [rows, weight] + ([bias] if bias is not None else [])
    src = _SRC.replace("BIAS", "1" if bias is not None else "0").replace("PARALLEL_MIN", f"{kernels.PARALLEL_MIN}L")
    y = jt.code((rows.shape[0], weight.shape[0]), "float32", inputs, cpu_header=mkl.CBLAS_HEADER, cpu_src=src)
    return y.reshape((*x.shape[:-1], weight.shape[0]))


class Linear(nn.Linear):
    """jittor.nn.Linear (same parameters and state-dict keys) whose forward is `linear` above in eval mode; in
    training mode it stays Jittor's, also under no_grad, so that gradient checkpointing recomputes the forward
    its gradients differentiate (as the attention kernels do)."""

    def execute(self, x: jt.Var) -> jt.Var:
        if self.is_training():
            return super().execute(x)
        return linear(x, self.weight, self.bias)
