"""Small pure functions shared by the models and methods (Jittor)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import jittor as jt
import numpy as np

from . import kernels

__all__ = ["silu", "gelu", "quick_gelu", "mean_std", "attention", "attention_batched", "attention_per_head",
           "attention_kernel", "ATTENTION_KERNELS", "as_dtype", "randn", "ACTIVATIONS"]


# Jittor's exp / sigmoid / erf return float32 for float16 inputs: the activations cast back, so a float16
# model stays float16 (mixed float32 x float16 matmuls fail on oneDNN and run slowly elsewhere).


def as_dtype(x: jt.Var, dtype: str) -> jt.Var:
    """x in `dtype`, without a cast op (nor a new kernel) when it already is."""
    return x if x.dtype == dtype else x.cast(dtype)


def _like(y: jt.Var, x: jt.Var) -> jt.Var:
    return as_dtype(y, x.dtype)


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


ATTENTION_KERNELS = ("batched", "per_head")


def attention_kernel(ndim: int, use_cuda: bool) -> str:
    """The kernel `attention` picks: batched matmuls on CUDA (cuBLAS) or for non-4-D inputs, else per-head GEMMs."""
    return "batched" if use_cuda or ndim != 4 else "per_head"


def _f32(x: jt.Var) -> jt.Var:
    return as_dtype(x, "float32")


def _score_inputs(query: jt.Var, key: jt.Var, upcast_attention: bool) -> tuple[jt.Var, jt.Var]:
    """Q and K in float32 with upcast_attention (diffusers' Attention.get_attention_scores), else as given."""
    return (_f32(query), _f32(key)) if upcast_attention else (query, key)


def attention_batched(
    query: jt.Var, key: jt.Var, value: jt.Var, scale: float, mask: jt.Var | None = None,
    upcast_attention: bool = False, upcast_softmax: bool = False,
) -> jt.Var:
    """softmax(scale * Q K^T + mask) V over the last two axes ([..., seq, dim]) with batched matmuls.

    Precision as diffusers' AttnProcessor: Q K^T in float32 with `upcast_attention`, the softmax in float32
    with `upcast_softmax` (or float32 scores), the probabilities cast to V's dtype, P V in V's dtype.
    """
    query, key = _score_inputs(query, key, upcast_attention)
    scores = jt.matmul(query, key.transpose(-1, -2)) * scale
    if mask is not None:
        scores = scores + _like(mask, scores)
    if upcast_softmax:
        scores = _f32(scores)
    return jt.matmul(_like(jt.nn.softmax(scores, dim=-1), value), value)


def attention_per_head(
    query: jt.Var, key: jt.Var, value: jt.Var, scale: float, mask: jt.Var | None = None,
    upcast_attention: bool = False, upcast_softmax: bool = False,
) -> jt.Var:
    """`attention_batched` on [B, heads, N, d] as 2-D GEMMs per (batch, head), with the same precision rules.

    The GEMMs reach oneDNN on CPU (batched matmuls stay on a one-thread loop kernel); the softmax
    normalisation is applied to the [N, d] output instead of the [N, M] probabilities, its row sums taken by
    the same GEMM through a column of ones appended to V (2-5x faster at SD sizes).
    """
    b, h = query.shape[:2]
    if mask is not None and mask.ndim < 4:
        mask = mask.reshape((1,) * (4 - mask.ndim) + tuple(mask.shape))
    query, key = _score_inputs(query, key, upcast_attention)
    query = query * scale  # (s Q) K^T: the scale on the smaller [N, d] operand
    d = value.shape[-1]
    value = jt.concat([value, jt.ones((*value.shape[:-1], 1), value.dtype)], dim=-1)  # e @ [V | 1] = [e V, sum e]
    outs = []
    for i in range(b):
        for j in range(h):
            kv = (min(i, key.shape[0] - 1), min(j, key.shape[1] - 1))  # broadcast a batch or head of 1
            scores = jt.nn.matmul_transpose(query[i, j], key[kv])
            if mask is not None:
                scores = scores + _like(mask[min(i, mask.shape[0] - 1), min(j, mask.shape[1] - 1)], scores)
            if upcast_softmax:
                scores = _f32(scores)
            if kernels.enabled(scores):  # softmax = e / sum(e), e = exp(s - max s) (shift-free)
                e = kernels.exp_shifted(scores)
            else:
                e = jt.exp(scores - scores.max(dim=-1, keepdims=True).stop_grad())
            out = jt.matmul(_like(e, value), value[kv])  # jt.exp gives float32 for float16: e in V's dtype
            outs.append(out[:, :d] / out[:, d:])
    return jt.stack(outs).reshape(b, h, *outs[0].shape)


def attention(
    query: jt.Var, key: jt.Var, value: jt.Var, scale: float, mask: jt.Var | None = None,
    upcast_attention: bool = False, upcast_softmax: bool = False, kernel: str | None = None,
) -> jt.Var:
    """softmax(scale * Q K^T + mask) V by `kernel` ('batched' / 'per_head'; None: `attention_kernel`'s choice)."""
    kernel = kernel or attention_kernel(query.ndim, bool(jt.flags.use_cuda))
    if kernel not in ATTENTION_KERNELS:
        raise ValueError(f"unknown attention kernel '{kernel}'; use one of {', '.join(ATTENTION_KERNELS)}")
    if kernel == "per_head" and query.ndim != 4:
        raise ValueError(f"the per_head attention kernel needs [B, heads, N, d], got {query.ndim}-D; use batched")
    fn = attention_batched if kernel == "batched" else attention_per_head
    return fn(query, key, value, scale, mask, upcast_attention, upcast_softmax)


def randn(
    shape: Sequence[int], generator: np.random.Generator, dtype: str = "float32"
) -> jt.Var:
    """Standard normal noise from an explicit numpy generator (no global seed, same on CPU and GPU)."""
    return jt.array(generator.standard_normal(tuple(shape)).astype(np.float32)).cast(dtype)
