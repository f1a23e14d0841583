"""jstyle.kernels' multi-threaded CPU kernels against the Jittor expressions they replace: outputs and gradients.

The tests set PARALLEL_MIN to 1, so that every loop runs split across threads (the one-thread path is the same
loop), with row counts that do not divide evenly among threads or LayerNorm's gradient chunks. Error model: both sides
round in float32; the kernel sums a group's or row's n terms in another order (GroupNorm's in float64) than
Jittor's reductions, so they differ by at most eps32 x n x the size of the values (`f32_bound`); the
elementwise ones (GEGLU, exp) by a few roundings of libm's exp / erf (vectorised or not), eps32 x 8 x |value|.
"""

import math

import jittor as jt
import numpy as np
import pytest

from jstyle import kernels, mkl
from jstyle.models.normalization import GroupNorm, LayerNorm, group_norm
from jstyle.models.transformer_2d import GEGLU

from ..tolerance import assert_close, f32_bound


@pytest.fixture(autouse=True)
def threaded_on_cpu(jittor_device, monkeypatch):
    if jittor_device != "cpu":
        pytest.skip("the kernels are CPU-only (JSTYLE_TEST_DEVICE=cuda runs the Jittor expressions)")
    monkeypatch.setattr(kernels, "PARALLEL_MIN", 1)


def _var(rng: np.random.Generator, shape, scale: float = 1.0, shift: float = 0.0) -> jt.Var:
    return jt.array((shift + scale * rng.standard_normal(shape)).astype(np.float32))


def _check(got_fn, want_fn, inputs: list[jt.Var], reduce_terms: int, what: str) -> None:
    """Outputs and the gradients of sum(out * dy) with respect to every input agree within the error model."""
    rng = np.random.default_rng(1)
    got, want = got_fn(*inputs), want_fn(*inputs)
    dy = _var(rng, want.shape)
    scale = float(np.abs(want.numpy()).max())
    assert_close(got.numpy(), want.numpy(), atol=f32_bound(reduce_terms, scale), what=f"{what} output")
    grads_got = jt.grad((got * dy).sum(), inputs)
    grads_want = jt.grad((want * dy).sum(), inputs)
    for i, (g, w) in enumerate(zip(grads_got, grads_want)):
        w = w.numpy()
        # a weight's [C] gradient sums over every sample and position as well
        terms = reduce_terms if inputs[i].ndim > 1 else want.numel() // w.size
        assert_close(g.numpy(), w, atol=f32_bound(terms, float(np.abs(w).max())), what=f"{what} grad {i}")


@pytest.mark.parametrize("act", [False, True])
def test_group_norm(act):
    rng = np.random.default_rng(0)
    x = _var(rng, (2, 64, 16, 16), scale=2.0, shift=0.5)
    w, b = _var(rng, (64,)), _var(rng, (64,))

    def want(x, w, b):
        y = group_norm(x, 32, w, b, 1e-6)
        return y * jt.sigmoid(y) if act else y

    _check(lambda x, w, b: kernels.group_norm(x, 32, w, b, 1e-6, act), want, [x, w, b], 2 * 256,
           f"group_norm act={act}")
    norm = GroupNorm(32, 64, eps=1e-6)  # the module takes the kernel on CPU, same numbers
    norm.weight, norm.bias = w, b
    assert_close(norm(x, silu=act).numpy(), kernels.group_norm(x, 32, w, b, 1e-6, act).numpy(), what="module")


def test_group_norm_of_tokens():
    """[B, C, N]: the attention layers' group norm on transposed tokens (a strided view in Jittor)."""
    rng = np.random.default_rng(2)
    tokens = _var(rng, (2, 256, 64))  # [B, N, C]
    w, b = _var(rng, (64,)), _var(rng, (64,))
    _check(lambda t, w, b: kernels.group_norm(t.transpose(0, 2, 1), 32, w, b, 1e-6),
           lambda t, w, b: group_norm(t.transpose(0, 2, 1), 32, w, b, 1e-6), [tokens, w, b], 2 * 256,
           "group_norm of tokens")


def test_layer_norm():
    rng = np.random.default_rng(3)
    x = _var(rng, (2, 77, 256), scale=3.0, shift=-1.0)  # 154 rows over 16 gradient chunks
    norm = LayerNorm(256, eps=1e-5)
    norm.weight, norm.bias = _var(rng, (256,)), _var(rng, (256,))
    # jittor.nn.LayerNorm's E[x^2] - E[x]^2 variance loses eps32 x |mean|^2 / var more than the two-pass one
    _check(lambda x, w, b: kernels.layer_norm(x, w, b, 1e-5),
           lambda x, w, b: jt.nn.layer_norm(x, (256,), w, b, 1e-5), [x, norm.weight, norm.bias], 4 * 256,
           "layer_norm")
    assert_close(norm(x).numpy(), kernels.layer_norm(x, norm.weight, norm.bias, 1e-5).numpy(), what="module")


def test_geglu():
    rng = np.random.default_rng(5)
    p = _var(rng, (2, 77, 512), scale=2.0)

    def want(p):
        h, gate = jt.chunk(p, 2, dim=-1)
        return h * (0.5 * gate * (1.0 + jt.erf(gate * (1.0 / math.sqrt(2.0)))))

    _check(kernels.geglu, want, [p], 8, "geglu")
    module = GEGLU(16, 256)
    x = _var(rng, (2, 77, 16))
    assert_close(module(x).numpy(), kernels.geglu(module.proj(x)).numpy(), what="GEGLU module")


def test_exp_shifted():
    rng = np.random.default_rng(6)
    scores = _var(rng, (200, 333), scale=8.0)  # |s - max| up to ~60: e spans many decades
    _check(kernels.exp_shifted, lambda s: jt.exp(s - s.max(dim=-1, keepdims=True).stop_grad()), [scores], 8,
           "exp_shifted")


@pytest.mark.parametrize("kv_batch, mask_shape", [(2, (1, 1, 77, 77)), (1, (2, 1, 1, 40)), (2, None)])
def test_attention(kv_batch, mask_shape):
    """CLIP's causal self-attention (a [1, 1, N, N] mask), a padding mask [B, 1, 1, M] with K / V of batch 1
    broadcast (StyleID's injected keys), and cross-attention without a mask, against the batched expression."""
    from jstyle.ops import attention, attention_batched

    rng = np.random.default_rng(7)
    n = 77 if mask_shape is None or mask_shape[-2] == 77 else 33
    m = n if mask_shape is None or mask_shape[-2] == 77 else mask_shape[-1]
    q, k, v = _var(rng, (2, 3, n, 16)), _var(rng, (kv_batch, 3, m, 16)), _var(rng, (kv_batch, 3, m, 24), 3.0)
    mask = None
    if mask_shape == (1, 1, 77, 77):
        mask = jt.array((np.triu(np.ones((n, m), np.float32), 1) * np.finfo(np.float32).min)[None, None])
    elif mask_shape is not None:
        keep = rng.random(mask_shape) < 0.7
        keep[..., 0] = True
        mask = jt.array(np.where(keep, 0.0, -1e4).astype(np.float32))
    with jt.no_grad():
        got = attention(q, k, v, 0.25, mask, kernel="fused")
        want = attention_batched(q, k, v, 0.25, mask)
    assert got.shape == want.shape == (2, 3, n, 24)
    # float32 scores of 16 terms (|s| <~ 5), the output a sum of m terms of |V| <~ 12: eps32 x m x 12
    assert_close(got.numpy(), want.numpy(), atol=f32_bound(m, 12.0), what=f"fused attention {mask_shape}")


@pytest.mark.skipif(not mkl.available(), reason="needs MKL (JSTYLE_MKL_DIR, installed by envs/setup.sh)")
@pytest.mark.parametrize("kv_batch", [2, 1])
def test_attention_blocks(kv_batch):
    """The MKL kernel for long sequences: 150 query rows (two full blocks of 64 and a partial one), K / V of 200
    keys, of batch 1 broadcast (StyleID's injected keys); picked by `attention` above FUSED_MAX_SCORES."""
    from jstyle.ops import FUSED_MAX_SCORES, attention, attention_batched

    rng = np.random.default_rng(8)
    q, k, v = _var(rng, (2, 3, 150, 16)), _var(rng, (kv_batch, 3, 200, 16)), _var(rng, (kv_batch, 3, 200, 24), 3.0)
    assert 150 * 200 < FUSED_MAX_SCORES < 300 * 200
    with jt.no_grad():
        got = attention(q, k, v, 0.25, kernel="blocks")
        want = attention_batched(q, k, v, 0.25)
        q2 = jt.concat([q, q], dim=2)  # 300 x 200 scores a head: above FUSED_MAX_SCORES, auto picks blocks
        auto, named = attention(q2, k, v, 0.25), attention(q2, k, v, 0.25, kernel="blocks")
    assert got.shape == want.shape == (2, 3, 150, 24)
    # as test_attention: scores of 16 terms, the output a sum of 200 terms of |V| <~ 12: eps32 x 200 x 12
    assert_close(got.numpy(), want.numpy(), atol=f32_bound(200, 12.0), what="blocks attention")
    assert np.array_equal(auto.numpy(), named.numpy())  # the same kernel on the same inputs
    with pytest.raises(ValueError, match="no mask"):
        attention(q, k, v, 0.25, jt.zeros((1, 1, 1, 200)), kernel="blocks")
