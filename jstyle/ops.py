"""Small pure functions shared by the models and methods (Jittor)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import jittor as jt
import numpy as np

__all__ = ["silu", "gelu", "quick_gelu", "mean_std", "attention", "randn", "ACTIVATIONS"]


# Jittor's exp / sigmoid / erf return float32 for float16 inputs: the activations cast back, so a float16
# model stays float16 (mixed float32 x float16 matmuls fail on oneDNN and run slowly elsewhere).


def _like(y: jt.Var, x: jt.Var) -> jt.Var:
    return y if y.dtype == x.dtype else y.cast(x.dtype)


def silu(x: jt.Var) -> jt.Var:
    """x * sigmoid(x)."""
    return _like(x * jt.sigmoid(x), x)


def gelu(x: jt.Var) -> jt.Var:
    """Exact GELU: x * Phi(x) = 0.5 x (1 + erf(x / sqrt 2))."""
    return _like(0.5 * x * (1.0 + jt.erf(x * (1.0 / math.sqrt(2.0)))), x)


def quick_gelu(x: jt.Var) -> jt.Var:
    """OpenAI CLIP's GELU approximation: x * sigmoid(1.702 x)."""
    return _like(x * jt.sigmoid(1.702 * x), x)


ACTIVATIONS = {"silu": silu, "swish": silu, "gelu": gelu, "quick_gelu": quick_gelu}


def mean_std(
    x: jt.Var, dims: Sequence[int], unbiased: bool = True, eps: float = 0.0
) -> tuple[jt.Var, jt.Var]:
    """Mean and standard deviation over several axes at once (keepdims).

    `unbiased=True` matches `torch.std`'s default (Bessel's correction); `eps` is added to the
    variance before the square root.
    """
    dims = tuple(d % x.ndim for d in dims)
    n = 1
    for d in dims:
        n *= x.shape[d]
    mean = x.mean(dims=dims, keepdims=True)
    centred = x - mean
    var = (centred * centred).sum(dims=dims, keepdims=True) / (n - 1 if unbiased else n)
    return mean, jt.sqrt(var + eps)


def attention(
    query: jt.Var, key: jt.Var, value: jt.Var, scale: float, mask: jt.Var | None = None
) -> jt.Var:
    """softmax(scale * Q K^T + mask) V over the last two axes ([..., seq, dim]).

    On CUDA: batched matmuls and Jittor's softmax kernel (cuBLAS). On CPU: 2-D GEMMs per (batch, head),
    which reach oneDNN (batched matmuls stay on a one-thread loop kernel), with the softmax normalisation
    applied to the [N, d] output instead of the [N, M] probabilities, its row sums taken by the same GEMM
    through a column of ones appended to V (2-5x faster at SD sizes).
    """
    if jt.flags.use_cuda or query.ndim != 4:
        scores = jt.matmul(query, key.transpose(-1, -2)) * scale
        if mask is not None:
            scores = scores + mask
        return jt.matmul(_like(jt.nn.softmax(scores, dim=-1), value), value)  # fp16: probs in V's dtype (diffusers)
    b, h = query.shape[:2]
    if mask is not None and mask.ndim < 4:
        mask = mask.reshape((1,) * (4 - mask.ndim) + tuple(mask.shape))
    query = query * scale
    d = value.shape[-1]
    value = jt.concat([value, jt.ones((*value.shape[:-1], 1), value.dtype)], dim=-1)  # e @ [V | 1] = [e V, sum e]
    outs = []
    for i in range(b):
        for j in range(h):
            kv = (min(i, key.shape[0] - 1), min(j, key.shape[1] - 1))  # broadcast a batch or head of 1
            scores = jt.nn.matmul_transpose(query[i, j], key[kv])
            if mask is not None:
                scores = scores + mask[min(i, mask.shape[0] - 1), min(j, mask.shape[1] - 1)]
            e = jt.exp(scores - scores.max(dim=-1, keepdims=True).stop_grad())  # softmax = e / sum(e), shift-free
            out = jt.matmul(_like(e, value), value[kv])  # jt.exp gives float32 for float16
            outs.append(out[:, :d] / out[:, d:])
    return jt.stack(outs).reshape(b, h, *outs[0].shape)


def randn(
    shape: Sequence[int], generator: np.random.Generator, dtype: str = "float32"
) -> jt.Var:
    """Standard normal noise from an explicit numpy generator (no global seed, same on CPU and GPU)."""
    return jt.array(generator.standard_normal(tuple(shape)).astype(np.float32)).cast(dtype)
