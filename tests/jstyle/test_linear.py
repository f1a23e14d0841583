"""jstyle.models.linear: MKL's sgemm gives jittor.nn.Linear's numbers in CPU float32 inference, training and
other dtypes keep Jittor's own path, and the models' linear layers are this class (same state-dict keys).

The two sides are different GEMM libraries (MKL vs oneDNN, each picking kernels by the processor's ISA and
blocking K its own way), so they agree within float32 rounding of a K-term sum, not bit for bit.
"""

from __future__ import annotations

import os
import subprocess
import sys

import jittor as jt
import numpy as np
import pytest
from jittor import nn

from jstyle import mkl
from jstyle.models import linear as L

from ..tolerance import assert_close, f32_bound

pytestmark = pytest.mark.skipif(not mkl.available(), reason="needs MKL (JSTYLE_MKL_DIR, installed by envs/setup.sh)")

RNG = np.random.default_rng(0)
K = 96
X = RNG.standard_normal((2, 5, K)).astype(np.float32)
W = (RNG.standard_normal((40, K)) * 0.1).astype(np.float32)
B = RNG.standard_normal(40).astype(np.float32)


@pytest.mark.parametrize("bias", [True, False])
def test_inference_is_jittors_linear(bias):
    x, w = jt.array(X), jt.array(W)
    b = jt.array(B) if bias else None
    with jt.no_grad():
        want = nn.linear(x, w, b).numpy()
        got = L.linear(x, w, b).numpy()
    assert got.shape == want.shape == (2, 5, 40)
    # the same sum of K products (+ the bias) in another order: eps32 x (K + 1) x |out| (|out| <= ~5 here: 5.8e-5)
    assert_close(got, want, atol=f32_bound(K + 1, np.abs(want).max()), what="MKL linear vs nn.linear")
    assert np.abs(got - (X @ W.T + (B if bias else 0))).max() < f32_bound(K + 1, np.abs(want).max())


def test_training_float16_and_mkl_off_keep_jittors_path():
    x, w, b = jt.array(X), jt.array(W), jt.array(B)
    assert not L._fast(x, w, b)  # with gradients: Jittor's GEMM, whose backward training relies on
    (dx,) = jt.grad((L.linear(x, w, b) * 2.0).sum(), [x])
    np.testing.assert_allclose(dx.numpy(), np.broadcast_to(2.0 * W.sum(0), X.shape), rtol=1e-5, atol=1e-5)
    with jt.no_grad():
        assert L._fast(x, w, b) and not L._fast(x.float16(), w.float16(), b.float16())
    code = ("import jittor as jt; from jstyle.models import linear as L\n"
            "with jt.no_grad(): print(L._fast(jt.ones((2, 3)), jt.ones((4, 3)), None))")
    for value, want in (("0", "False"), ("1", "True")):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                             env={**os.environ, "JSTYLE_MKL": value})
        assert out.returncode == 0 and out.stdout.strip().splitlines()[-1] == want, out.stderr[-1500:]


def test_model_layers_are_this_linear_with_the_same_keys():
    from jstyle.models.attention import Attention

    attn = Attention(32, heads=2, dim_head=16, out_bias=True)
    assert all(isinstance(m, L.Linear) for m in (attn.to_q, attn.to_k, attn.to_v, attn.to_out[0]))
    assert {"to_q.weight", "to_k.weight", "to_v.weight", "to_out.0.weight", "to_out.0.bias"} <= set(attn.state_dict())


def test_a_module_in_training_mode_keeps_jittors_gemm_under_no_grad():
    """Gradient checkpointing recomputes a training module's forward under no_grad: it must be the forward the
    gradients differentiate, so the module takes MKL only in eval mode (bit for bit: Jittor's GEMM both times)."""
    layer = L.Linear(K, 40)
    layer.weight.assign(jt.array(W))
    layer.bias.assign(jt.array(B))
    x = jt.array(X)
    layer.train()
    want = layer(x).numpy()  # with gradients: Jittor's GEMM
    with jt.no_grad():
        np.testing.assert_array_equal(layer(x).numpy(), want)
        layer.eval()
        np.testing.assert_array_equal(layer(x).numpy(), L.linear(x, layer.weight, layer.bias).numpy())
