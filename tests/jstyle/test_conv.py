"""jstyle.models.conv: the oneDNN Conv2d forward gives Jittor's nn.conv2d's numbers, its gradients are Jittor's, and a
cached reordered weight never outlives the weight it was made from.

The two sides are different oneDNN calls (jstyle's: `format_tag::any` layouts and the bias fused in; Jittor's:
plain layouts, the bias added after), so oneDNN may pick different kernels for them by the processor's ISA:
with AVX-512 both run brgconv:avx512_core and agree to the last bit; capped at AVX2
(ONEDNN_MAX_CPU_ISA=AVX2, as tests/run.sh's second pass runs them) they differ by up to 2.6e-6.
"""

from __future__ import annotations

import os
import subprocess
import sys

import jittor as jt
import numpy as np
import pytest
from jittor import nn

from jstyle.models import conv as C

from ..tolerance import assert_close, f32_bound

pytestmark = pytest.mark.skipif(not C.fast_conv_available(), reason="needs Jittor's oneDNN ops (use_mkl=1) on CPU")

RNG = np.random.default_rng(0)
TERMS = 8 * 9 + 1  # one output: 8 channels x 3 x 3 products, plus the bias
X = RNG.standard_normal((2, 8, 9, 9)).astype(np.float32)
W3 = (RNG.standard_normal((16, 8, 3, 3)) * 0.1).astype(np.float32)
W1 = (RNG.standard_normal((16, 8, 1, 1)) * 0.1).astype(np.float32)
B = RNG.standard_normal(16).astype(np.float32)

# (weight, stride, padding, bias): the UNet's and VAE's three kinds (3x3, stride-2 3x3, 1x1), and one without bias
CASES = [(W3, 1, 1, True), (W3, 2, 0, True), (W1, 1, 0, True), (W3, 1, 1, False)]


@pytest.mark.parametrize("w,stride,padding,bias", CASES)
def test_forward_is_jittors_conv(w, stride, padding, bias):
    x, weight = jt.array(X), jt.array(w)
    b = jt.array(B) if bias else None
    with jt.no_grad():
        want = nn.conv2d(x, weight, b, stride, padding).numpy()
        got = C.conv2d(x, weight, b, (stride, stride), (padding, padding)).numpy()
    # The same sum of up to 73 float32 terms in another order (another oneDNN kernel, the bias inside instead of
    # after): eps32 x 73 x |out| (|out| <= 4.2 here: 3.6e-5). Measured 0.0 on AVX-512 (the same brgconv kernel);
    # capped at AVX2 (jit:avx2): 1.4e-6, 22x under the bound (2-core AMD EPYC; the same on a Zen 3 AVX2 machine).
    assert_close(got, want, atol=f32_bound(TERMS, np.abs(want).max()), what="conv2d vs nn.conv2d")


@pytest.mark.parametrize("w,stride,padding,bias", CASES[:3])
def test_gradients_are_jittors(w, stride, padding, bias):
    x, weight, b = jt.array(X), jt.array(w), jt.array(B)
    dy_shape = nn.conv2d(x, weight, b, stride, padding).shape
    dy = jt.array(np.random.default_rng(1).standard_normal(dy_shape).astype(np.float32))
    want = jt.grad((nn.conv2d(x, weight, b, stride, padding) * dy).sum(), [x, weight, b])
    got = jt.grad((C.conv2d(x, weight, b, (stride, stride), (padding, padding)) * dy).sum(), [x, weight, b])
    # dx, dW, db: float32 sums of up to 2*9*9 products of standard normals (|sum| up to ~10), summed in another
    # order by the reference's graph: eps32 x 162 x 10 = 1.9e-4 (measured: dW 1.5e-5, dx and db 0.0).
    for name, g, r in zip(("dx", "dW", "db"), got, want):
        assert_close(g.numpy(), r.numpy(), atol=f32_bound(2 * 9 * 9, 10.0), what=name)


def test_module_is_a_jittor_conv2d_with_the_same_keys():
    m = C.Conv2d(8, 16, 3, padding=1)
    assert isinstance(m, nn.Conv2d)
    assert sorted(m.state_dict()) == ["bias", "weight"]


def test_cached_weights_follow_the_weight(monkeypatch):
    monkeypatch.setenv("JSTYLE_CONV_CACHE_MB", "64")
    x = jt.array(X)
    m = C.Conv2d(8, 16, 3, padding=1)
    with jt.no_grad():
        m.weight.assign(jt.array(W3))
        m.bias.assign(jt.array(B))
        first = m(x).numpy()
        # the second call reads the cached reordered weight: the same kernel on the same packed values, bit for bit
        assert np.array_equal(m(x).numpy(), first)
        m.weight.update(jt.array(2 * W3))  # a new weight (as load_parameters, LoRA fuse and optimisers make)
        second = m(x).numpy()
        want = nn.conv2d(x, jt.array(2 * W3), jt.array(B), 1, 1).numpy()
    # as in test_forward_is_jittors_conv, another kernel's order: |out| <= 7.2, 6.3e-5 (measured 0.0 on AVX-512,
    # 2.6e-6 capped at AVX2); a stale cached weight would leave `first`, off by up to 3.6
    assert_close(second, want, atol=f32_bound(TERMS, np.abs(want).max()), what="conv2d with a new weight")
    assert np.abs(second - first).max() > 0.1


def test_onednn_honours_the_avx2_cap():
    """tests/run.sh's second pass caps oneDNN at AVX2 (the kernels an AVX2-only machine runs); a oneDNN built
    without that switch (DNNL_ENABLE_MAX_CPU_ISA=OFF) would silently run its AVX-512 kernels there. Both oneDNN
    builds envs/setup.sh wires (pip's 2.6.0, Debian's 2.6.3) honour it."""
    code = ("import jittor as jt; from jstyle.models import conv as C\n"
            "with jt.no_grad(): C.conv2d(jt.ones((1, 8, 9, 9)), jt.ones((16, 8, 3, 3)), None, (1, 1), (1, 1)).sync()")
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2", "ONEDNN_VERBOSE": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert any(",info,cpu,isa:" in ln and ln.endswith("AVX2") for ln in lines), "\n".join(lines[:5])
    convs = [ln for ln in lines if ",exec,cpu,convolution," in ln]
    assert convs and not any("avx512" in ln for ln in convs), convs


def test_jittor_and_jstyle_run_the_onednn_set_up_wired():
    """envs/setup.sh wires one oneDNN (pip's by default, else Debian's) into Jittor's cache: Jittor's ops and the
    kernels jstyle compiles (their headers through env.sh's CPATH) load that library, not another copy."""
    wired = os.environ.get("JSTYLE_ONEDNN_DIR", "")
    if os.environ.get("use_mkl") != "1" or not wired:
        pytest.skip("no oneDNN wired by envs/setup.sh (use_mkl=0)")
    code = ("import jittor as jt; from jstyle.models import conv as C\n"
            "with jt.no_grad(): C.conv2d(jt.ones((1, 8, 9, 9)), jt.ones((16, 8, 3, 3)), None, (1, 1), (1, 1)).sync()\n"
            "print(sorted({l.split()[-1] for l in open('/proc/self/maps') if 'libdnnl' in l}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    want = os.path.realpath(os.path.join(wired, "lib", "libmkldnn.so"))
    assert out.stdout.strip().splitlines()[-1] == str([want]), (out.stdout[-500:], want)
