"""Numeric bounds with their error models, and a record of how much of each bound a run used.

Every numeric assertion in tests/ goes through `assert_close` (or `assert_at_most` for a scalar), with
the bound derived beside it from an error model, e.g. float32 epsilon x the length of the reduction x
the size of the values (`f32_bound`). Set JSTYLE_TOLERANCE_LOG=FILE to append one JSON line per check
(test, line, measured max abs error, share of the bound used); `python tests/tolerance.py FILE` prints
the table, worst first.
Works in both envs (numpy only).
"""

from __future__ import annotations

import inspect
import json
import os
import sys
from pathlib import Path

import numpy as np

EPS32 = float(np.finfo(np.float32).eps)  # 1.19e-7: one rounding of a float32 value of size 1
EPS16 = float(np.finfo(np.float16).eps)  # 9.8e-4
UINT8 = 1.0  # one grey level: the rounding of an image written as uint8


def f32_bound(terms: float, scale: float, eps: float = EPS32) -> float:
    """Worst-case rounding of a float32 computation: eps * (number of accumulated terms) * |values|.

    A deterministic bound that pairwise/blocked summation beats by far; tests add their own headroom.
    """
    return eps * terms * scale


# Parity of the tiny models (tests/reference/make_tiny.py) with diffusers/transformers in float32: the same
# weights and inputs, summed in other orders (oneDNN / Jittor vs torch). Worst case eps32 x the longest
# reduction x the size of the values; measured errors sit 30-100x below these (see each test).
UNET_ATOL = f32_bound(2 * 64 * 9, 2.5)  # up-block 3x3 convs over 2 x 64 concatenated channels, |out| ~2.5: 3.4e-4
VAE_ATOL = f32_bound(64 * 9, 2.0)  # 3x3 convs over 64 channels, |decoded| <= 2: 1.4e-4
TEXT_ATOL = 3 * f32_bound(77, 4.0)  # 3 layers, attention over 77 tokens, LayerNorm'd values ~4: 1.1e-4


def _record(kind: str, measured: float, share: float, what: str) -> None:
    path = os.environ.get("JSTYLE_TOLERANCE_LOG")
    if not path:
        return
    frame = inspect.stack()[2]
    test = os.environ.get("PYTEST_CURRENT_TEST", "").split(" ")[0]
    row = dict(test=test, file=Path(frame.filename).name, line=frame.lineno, kind=kind, measured=measured,
               share=share, what=what)
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


def assert_close(got, want, *, atol: float = 0.0, rtol: float = 0.0, what: str = "") -> float:
    """|got - want| <= atol + rtol * |want| elementwise (numpy's rule); returns the share of the bound used."""
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    try:  # `want` may broadcast to `got` (numpy's rule), never the other way round
        same = np.broadcast_shapes(got.shape, want.shape) == got.shape
    except ValueError:
        same = False
    assert same, f"{what}: shape {got.shape} vs expected {want.shape}"
    assert np.isfinite(got).all(), f"{what}: non-finite values"
    err = np.abs(got - want)
    allowed = atol + rtol * np.abs(want)
    if np.all(allowed > 0):
        used = float(np.max(err / allowed)) if err.size else 0.0
    else:  # a zero bound: exact equality wherever it is zero
        exact = allowed == 0
        used = np.inf if np.any(err[exact] > 0) else float(np.max(err[~exact] / allowed[~exact], initial=0.0))
    kind = "abs" if rtol == 0 else ("rel" if atol == 0 else "abs+rel")
    _record(kind, float(err.max()) if err.size else 0.0, used, what)
    assert used <= 1.0, (f"{what or 'values'}: max abs error {err.max():.3g} (worst element uses {used:.3g}x "
                         f"the bound atol={atol:.3g} rtol={rtol:.3g})")
    return used


def assert_at_most(value: float, bound: float, what: str = "") -> float:
    """A scalar error measure `value` <= `bound`; returns value / bound."""
    value = float(value)
    _record("scalar", value, value / bound if bound else (0.0 if value <= 0 else np.inf), what)
    assert value <= bound, f"{what or 'value'}: {value:.4g} > bound {bound:.4g}"
    return value / bound if bound else 0.0


def _table(path: str) -> None:
    """Worst share of its bound per assertion (file:line) over every recorded check; least headroom first."""
    worst: dict[tuple, dict] = {}
    for line in Path(path).read_text().splitlines():
        r = json.loads(line)
        key = (r["file"], r["line"])
        if key not in worst or r["share"] > worst[key]["share"]:
            worst[key] = r
    print(f"{'file:line':36s} {'kind':8s} {'max abs err':>11s} {'headroom':>9s}  test")
    for r in sorted(worst.values(), key=lambda r: -r["share"]):
        head = f"{1 / r['share']:.0f}x" if r["share"] > 0 else "exact"
        print(f"{r['file'] + ':' + str(r['line']):36s} {r['kind']:8s} {r['measured']:11.3g} {head:>9s}  {r['test']}")


if __name__ == "__main__":
    _table(sys.argv[1])
