"""Small pure functions shared by the models and methods (Jittor)."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import jittor as jt
import numpy as np

from . import kernels, mkl

__all__ = ["silu", "gelu", "quick_gelu", "mean_std", "attention", "attention_batched", "attention_per_head",
           "attention_recomputed", "attention_kernel", "ATTENTION_KERNELS", "as_dtype", "randn", "ACTIVATIONS"]


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


ATTENTION_KERNELS = ("batched", "per_head", "fused", "blocks")


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


def _mask4(mask: jt.Var | None) -> jt.Var | None:
    """A mask of fewer than 4 axes as [1, ..., N|1, M] (it broadcasts over the missing batch and head axes)."""
    if mask is None or mask.ndim >= 4:
        return mask
    return mask.reshape((1,) * (4 - mask.ndim) + tuple(mask.shape))


def _heads(
    query: jt.Var, key: jt.Var, mask: jt.Var | None,
) -> Iterator[tuple[int, int, tuple[int, int], jt.Var | None]]:
    """(i, j, K/V index, mask [N, M] or None) of each (batch i, head j) of query [B, heads, N, d]; a K/V or mask
    batch or head of 1 broadcasts."""
    mask = _mask4(mask)
    for i in range(query.shape[0]):
        for j in range(query.shape[1]):
            m = None if mask is None else mask[min(i, mask.shape[0] - 1), min(j, mask.shape[1] - 1)]
            yield i, j, (min(i, key.shape[0] - 1), min(j, key.shape[1] - 1)), m


def _head_scores(q: jt.Var, k: jt.Var, mask: jt.Var | None, upcast_softmax: bool) -> jt.Var:
    """One head's scores q k^T (+ mask), q already scaled; float32 with upcast_softmax."""
    scores = jt.nn.matmul_transpose(q, k)
    if mask is not None:
        scores = scores + _like(mask, scores)
    return _f32(scores) if upcast_softmax else scores


def _per_head(
    query: jt.Var, key: jt.Var, value: jt.Var, scale: float, mask: jt.Var | None,
    upcast_attention: bool, upcast_softmax: bool, row_max: bool = True,
) -> list[tuple[jt.Var, jt.Var | None]]:
    """(softmax(scores) V [N, d], the scores' row max [N, 1], or None without `row_max`) of each head."""
    query, key = _score_inputs(query, key, upcast_attention)
    query = query * scale  # (s Q) K^T: the scale on the smaller [N, d] operand
    d = value.shape[-1]
    value = jt.concat([value, jt.ones((*value.shape[:-1], 1), value.dtype)], dim=-1)  # e @ [V | 1] = [e V, sum e]
    heads = []
    for i, j, kv, m in _heads(query, key, mask):
        scores = _head_scores(query[i, j], key[kv], m, upcast_softmax)
        if not row_max and kernels.enabled(scores):  # softmax = e / sum(e), e = exp(s - max s) (shift-free)
            e, top = kernels.exp_shifted(scores), None
        else:
            top = scores.max(dim=-1, keepdims=True).stop_grad()
            e = jt.exp(scores - top)
        out = jt.matmul(_like(e, value), value[kv])  # jt.exp gives float32 for float16: e in V's dtype
        heads.append((out[:, :d] / out[:, d:], top))
    return heads


def attention_per_head(
    query: jt.Var, key: jt.Var, value: jt.Var, scale: float, mask: jt.Var | None = None,
    upcast_attention: bool = False, upcast_softmax: bool = False,
) -> jt.Var:
    """`attention_batched` on [B, heads, N, d] as 2-D GEMMs per (batch, head), with the same precision rules.

    The GEMMs reach oneDNN on CPU (batched matmuls stay on a one-thread loop kernel); the softmax
    normalisation is applied to the [N, d] output instead of the [N, M] probabilities, its row sums taken by
    the same GEMM through a column of ones appended to V (2-5x faster at SD sizes).
    """
    outs = [out for out, _ in _per_head(query, key, value, scale, mask, upcast_attention, upcast_softmax, False)]
    return jt.stack(outs).reshape(*query.shape[:2], *outs[0].shape)


def _head_grads(q: jt.Var, k: jt.Var, v: jt.Var, dout: jt.Var, e: jt.Var) -> tuple[jt.Var, jt.Var, jt.Var]:
    """dQ, dK, dV of one head (q scaled by s; dQ still to be scaled) from e = exp(scores - row max), float32:
    P = e / l, l = rowsum(e); dV = P^T dO = e^T (dO / l); dS = P * (dP - rowsum(P * dP)) with dP = dO V^T;
    dQ = dS K, dK = dS^T q. l from this e (not the forward's rounded row sums), so each row of dS sums to 0."""
    row_sum = e.sum(dim=-1, keepdims=True)
    # A^T B as (B^T A)^T: Jittor hands that form to oneDNN (P^T dO as written runs ~15x slower)
    dv = jt.matmul((dout / _like(row_sum, dout)).transpose(), _like(e, v)).transpose()
    dp = _f32(jt.nn.matmul_transpose(dout, v))
    ds = _like(e * (dp - (e * dp).sum(dim=-1, keepdims=True) / row_sum) / row_sum, q)
    return jt.matmul(ds, k), jt.matmul(q.transpose(), ds).transpose(), dv


class _RecomputedAttention(jt.Function):
    """`attention_per_head` that keeps only Q, K, V and each head's row max of the scores for the backward pass,
    which recomputes each head's e = exp(scores - max) there (flash attention's backward, `_head_grads`), one
    head at a time.

    The gradients are built under no_grad: Jittor otherwise keeps every variable a second-order gradient could
    need (each head's [N, M] scores, P and dS) for as long as the gradients live. Heads run in order (Jittor
    runs ready ops in creation order; each head's inputs also depend, by a zero, on the previous head's
    gradients), so one head's [N, M] work lives at a time. The mask gets no gradient (`attention` takes this
    path only for a mask that needs none).
    """

    def __init__(self, scale: float, mask: jt.Var | None, upcast_attention: bool, upcast_softmax: bool):
        self.scale, self.mask = scale, mask
        self.upcast_attention, self.upcast_softmax = upcast_attention, upcast_softmax

    def execute(self, query: jt.Var, key: jt.Var, value: jt.Var) -> jt.Var:
        self.saved = [x.detach() for x in (query, key, value)]
        self.requires = [not x.is_stop_grad() for x in (query, key, value)]
        with jt.no_grad():  # nothing behind the output: the backward pass recomputes it
            heads = _per_head(query, key, value, self.scale, self.mask, self.upcast_attention, self.upcast_softmax)
            out = jt.stack([o for o, _ in heads]).reshape(*query.shape[:2], *heads[0][0].shape)
        self.row_max = [m for _, m in heads]
        return out

    def grad(self, dout: jt.Var | None) -> list[jt.Var | None]:
        if dout is None:
            return [None, None, None]
        with jt.no_grad():
            return self._grads(dout)

    def _grads(self, dout: jt.Var) -> list[jt.Var | None]:
        query, key, value = self.saved
        q, k = _score_inputs(query, key, self.upcast_attention)
        q = q * self.scale  # as in the forward pass: (s Q) K^T
        dout = _like(dout, value)
        dq, dk, dv = [], {}, {}
        anchor = None
        for (i, j, kv, m), row_max in zip(_heads(query, key, self.mask), self.row_max, strict=True):
            head = [q[i, j], k[kv], value[kv], dout[i, j]]
            if anchor is not None:  # after the previous head's gradients
                head = [x + _like(anchor, x) for x in head]
            e = jt.exp(_head_scores(head[0], head[1], m, self.upcast_softmax) - row_max)  # as in the forward pass
            dqh, dkh, dvh = _head_grads(*head, e)
            dq.append(dqh * self.scale)
            dk[kv] = dkh if kv not in dk else dk[kv] + dkh
            dv[kv] = dvh if kv not in dv else dv[kv] + dvh
            anchor = sum(x.reshape(-1)[:1].sum() for x in (dqh, dkh, dvh)) * 0
        grads = [jt.stack(dq).reshape(query.shape), _stack_heads(dk, key.shape), _stack_heads(dv, value.shape)]
        return [_like(g, x) if r else None for g, x, r in zip(grads, (query, key, value), self.requires, strict=True)]


def _stack_heads(parts: dict[tuple[int, int], jt.Var], shape: Sequence[int]) -> jt.Var:
    """Per-(batch, head) [M, d] gradients, by index, stacked into `shape` [B, heads, M, d]."""
    return jt.stack([parts[i, j] for i in range(shape[0]) for j in range(shape[1])]).reshape(shape)


def attention_recomputed(
    query: jt.Var, key: jt.Var, value: jt.Var, scale: float, mask: jt.Var | None = None,
    upcast_attention: bool = False, upcast_softmax: bool = False,
) -> jt.Var:
    """`attention_per_head` whose backward pass recomputes the probabilities one head at a time (training
    memory: one head's [N, M] instead of every head's, and none kept from the forward pass)."""
    return _RecomputedAttention(scale, mask, upcast_attention, upcast_softmax)(query, key, value)


def _needs_grad(*xs: jt.Var) -> bool:
    return not jt.flags.no_grad and any(not x.is_stop_grad() for x in xs)


# The fused kernel's one-row-at-a-time loop beats the per-head GEMMs while a head's score matrix is small (the
# text encoder's 77 x 77: 0.37x their time; the UNet's 256 x 77 at latent 32: 0.66x) and loses on large ones
# (256 x 256: 1.3x; 1024 x 77: 1.4x; bench/kernels.py on a 2-core AMD EPYC, AVX-512): picked up to this size.
FUSED_MAX_SCORES = 1 << 15


def _fused_applies(query: jt.Var, key: jt.Var, value: jt.Var, mask: jt.Var | None) -> bool:
    """kernels.attention can run: 4-D float32 on CPU, no gradient to compute."""
    xs = (query, key, value) + (() if mask is None else (mask,))
    return query.ndim == 4 and all(kernels.enabled(x) for x in xs) and not _needs_grad(*xs)


def _fused(
    query: jt.Var, key: jt.Var, value: jt.Var, scale: float, mask: jt.Var | None,
    upcast_attention: bool, upcast_softmax: bool,
) -> jt.Var:
    """kernels.attention (float32 throughout, so the upcast flags change nothing); a mask of < 4 axes broadcasts."""
    return kernels.attention(query, key, value, scale, _mask4(mask))


def _blocks_apply(query: jt.Var, key: jt.Var, value: jt.Var, mask: jt.Var | None) -> bool:
    """kernels.attention_blocks can run: as the fused kernel, without a mask, with MKL."""
    return mask is None and _fused_applies(query, key, value, None) and mkl.available()


def _blocks(
    query: jt.Var, key: jt.Var, value: jt.Var, scale: float, mask: jt.Var | None,
    upcast_attention: bool, upcast_softmax: bool,
) -> jt.Var:
    """kernels.attention_blocks (float32 throughout, so the upcast flags change nothing)."""
    return kernels.attention_blocks(query, key, value, scale)


def attention(
    query: jt.Var, key: jt.Var, value: jt.Var, scale: float, mask: jt.Var | None = None,
    upcast_attention: bool = False, upcast_softmax: bool = False, kernel: str | None = None, training: bool = False,
) -> jt.Var:
    """softmax(scale * Q K^T + mask) V by `kernel` ('batched' / 'per_head' / 'fused' / 'blocks'; None:
    `attention_kernel`'s choice, with 'fused' in its place where it applies: CPU inference in float32, at most
    FUSED_MAX_SCORES scores a head, and not `training`; above that size 'blocks' where MKL is installed and there is
    no mask (a module in training mode: its forward stays the one its gradients differentiate,
    also where gradient checkpointing runs it under no_grad).

    per_head with gradients to compute (training) takes `attention_recomputed`: the same forward pass. fused is
    kernels.attention, one multi-threaded pass per query row without a gradient; blocks is
    kernels.attention_blocks, MKL GEMMs on blocks of query rows."""
    auto = kernel is None
    kernel = kernel or attention_kernel(query.ndim, bool(jt.flags.use_cuda))
    if kernel not in ATTENTION_KERNELS:
        raise ValueError(f"unknown attention kernel '{kernel}'; use one of {', '.join(ATTENTION_KERNELS)}")
    if kernel in ("per_head", "fused") and query.ndim != 4:
        raise ValueError(f"the {kernel} attention kernel needs [B, heads, N, d], got {query.ndim}-D; use batched")
    small = query.shape[-2] * key.shape[-2] <= FUSED_MAX_SCORES
    if auto and kernel == "per_head" and not training and _fused_applies(query, key, value, mask):
        kernel = "fused" if small else "blocks" if _blocks_apply(query, key, value, mask) else kernel
    elif kernel == "fused" and not _fused_applies(query, key, value, mask):
        raise ValueError("the fused attention kernel needs float32 inputs on CPU and no gradient "
                         "(run under jt.no_grad()); use per_head")
    elif kernel == "blocks" and not _blocks_apply(query, key, value, mask):
        raise ValueError("the blocks attention kernel needs float32 inputs on CPU, no mask, no gradient "
                         "(run under jt.no_grad()) and MKL (envs/setup.sh); use per_head")
    fn = {"batched": attention_batched, "per_head": attention_per_head, "fused": _fused, "blocks": _blocks}[kernel]
    if kernel == "per_head" and _needs_grad(query, key, value) and (mask is None or mask.is_stop_grad()):
        fn = attention_recomputed  # training: the same forward, a backward that holds one head at a time
    return fn(query, key, value, scale, mask, upcast_attention, upcast_softmax)


def randn(
    shape: Sequence[int], generator: np.random.Generator, dtype: str = "float32"
) -> jt.Var:
    """Standard normal noise from an explicit numpy generator (no global seed, same on CPU and GPU)."""
    return jt.array(generator.standard_normal(tuple(shape)).astype(np.float32)).cast(dtype)
