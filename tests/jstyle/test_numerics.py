"""Flush-to-zero: who sets it in a jstyle process, and that parity results do not depend on it.

Jittor compiles and links every JIT kernel with -Ofast (jittor/compiler.py, `kernel_opt_flags`); GCC 12
then links crtfastmath.o into each kernel .so, whose constructor sets FTZ and DAZ (MXCSR |= 0x8040) in
the thread that loads it: the calling thread for a lone new kernel, a worker of Jittor's parallel op
compiler for a batch. So whether float32 subnormals (|x| < 1.2e-38) are flushed in the main thread,
numpy included (numpy's "smallest subnormal is zero" warning), depends on which ops ran first.
conftest.py loads one lone kernel before any test, so every test runs in one state whatever the order.
See docs/performance.md.
"""

import platform

import jittor as jt
import numpy as np
import pytest

from jstyle.loading import load_model
from jstyle.models.unet_2d_condition import UNet2DConditionModel

from ..tolerance import assert_close

pytestmark = pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="MXCSR is x86's")
FTZ_DAZ = 0x8040


def set_ftz(on: bool) -> int:
    """Turn FTZ and DAZ on or off in this thread's MXCSR (from inside a Jittor kernel); returns MXCSR."""
    src = f"unsigned m = _mm_getcsr(); _mm_setcsr({'m | 0x8040u' if on else 'm & ~0x8040u'}); @out(0) = _mm_getcsr();"
    out = jt.code((1,), "int32", [jt.zeros((1,), "int32")], cpu_header="#include <xmmintrin.h>", cpu_src=src)
    return int(out.numpy()[0])


def flushes() -> bool:
    """True when float32 subnormals are flushed to zero in this thread (numpy sees it too)."""
    return bool(np.float32(1e-39) * np.float32(1.0) == 0)


def test_jittor_kernels_turn_flush_to_zero_on():
    assert flushes()  # conftest ran a kernel: on for the whole session
    assert set_ftz(False) & FTZ_DAZ == 0 and not flushes()
    jt.array(np.arange(4, dtype=np.float32)).sqrt().sum().sync()  # a kernel not yet loaded in this process
    assert flushes()  # ... sets it again
    assert set_ftz(True) & FTZ_DAZ == FTZ_DAZ


def test_unet_parity_does_not_depend_on_flush_to_zero(tiny_ref, refs):
    r = refs("sd2")
    unet = load_model(UNet2DConditionModel, tiny_ref / "sd2" / "unet")

    def run() -> np.ndarray:
        return unet(jt.array(r["unet_sample"]), jt.array(r["unet_timesteps"]), jt.array(r["unet_context"])).numpy()

    with_ftz = run()  # compiles and loads every kernel of the forward pass
    set_ftz(False)
    try:
        without = run()  # the same kernels, already loaded: nothing turns FTZ back on
        assert not flushes()
    finally:
        set_ftz(True)
    # Bit-exact: the same kernels on the same inputs; a random tiny UNet's activations never come near
    # the subnormal range (1.2e-38), so flushing changes nothing.
    assert np.array_equal(with_ftz, without)
    # and both match diffusers (no FTZ in torch): outputs ~2.5, float32 rounding over reductions of
    # ~600 terms, 600 * 1.2e-7 * 2.5 = 1.8e-4; measured 4e-6 here (AMD EPYC)
    assert_close(without, r["unet_out"], atol=2e-4, what="unet without FTZ")
