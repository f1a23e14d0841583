"""Small pure functions shared by the models and methods (Jittor)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import jittor as jt
import numpy as np

__all__ = ["silu", "gelu", "quick_gelu", "mean_std", "attention", "randn", "ACTIVATIONS"]


def silu(x: jt.Var) -> jt.Var:
    """x * sigmoid(x)."""
    return x * jt.sigmoid(x)


def gelu(x: jt.Var) -> jt.Var:
    """Exact GELU: x * Phi(x) = 0.5 x (1 + erf(x / sqrt 2))."""
    return 0.5 * x * (1.0 + jt.erf(x * (1.0 / math.sqrt(2.0))))


def quick_gelu(x: jt.Var) -> jt.Var:
    """OpenAI CLIP's GELU approximation: x * sigmoid(1.702 x)."""
    return x * jt.sigmoid(1.702 * x)


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
    """softmax(scale * Q K^T + mask) V over the last two axes ([..., seq, dim])."""
    scores = jt.matmul(query, key.transpose(-1, -2)) * scale
    if mask is not None:
        scores = scores + mask
    return jt.matmul(jt.nn.softmax(scores, dim=-1), value)


def randn(
    shape: Sequence[int], generator: np.random.Generator, dtype: str = "float32"
) -> jt.Var:
    """Standard normal noise from an explicit numpy generator (no global seed, same on CPU and GPU)."""
    return jt.array(generator.standard_normal(tuple(shape)).astype(np.float32)).cast(dtype)
