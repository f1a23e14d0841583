"""Intel MKL's GEMM for the CPU kernels (jstyle/models/linear.py, jstyle.kernels.attention_blocks).

envs/setup.sh installs MKL from pip (the GEMM library torch's CPU wheels carry) and env.sh exports its folder as
`JSTYLE_MKL_DIR`; `available()` loads its GNU OpenMP / gfortran-LP64 layering (what `-lmkl_gf_lp64
-lmkl_gnu_thread -lmkl_core -lgomp` links) once, globally, so that kernels compiled with `CBLAS_HEADER` resolve
`cblas_sgemm`. MKL loads its per-ISA kernels (libmkl_avx2, _avx512, ...) from the same folder itself and reads
MKL_ENABLE_INSTRUCTIONS (AVX2 caps it as ONEDNN_MAX_CPU_ISA caps oneDNN). `JSTYLE_MKL=0` turns it off.
"""

from __future__ import annotations

import ctypes
import functools
import os

__all__ = ["available", "CBLAS_HEADER"]

_LIBS = ("libmkl_core.so.3", "libmkl_gnu_thread.so.3", "libmkl_gf_lp64.so.3")

# cblas_sgemm with CBLAS's enum values written out: RowMajor 101, NoTrans 111, Trans 112.
CBLAS_HEADER = r"""
extern "C" void cblas_sgemm(int layout, int trans_a, int trans_b, int m, int n, int k, float alpha, const float* a,
                            int lda, const float* b, int ldb, float beta, float* c, int ldc);
"""


@functools.cache
def available() -> bool:
    """MKL's libraries are in JSTYLE_MKL_DIR and loaded."""
    folder = os.environ.get("JSTYLE_MKL_DIR", "")
    if os.environ.get("JSTYLE_MKL", "1") == "0" or not folder:
        return False
    try:
        for name in _LIBS:
            ctypes.CDLL(os.path.join(folder, name), mode=os.RTLD_GLOBAL | os.RTLD_LAZY)
    except OSError:
        return False
    return True
