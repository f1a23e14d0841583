"""read_rgb(fit="squash") is the JDiffusion baseline's `jittor.transform.Resize(512)`: with an int, Jittor makes
the size (512, 512) and PIL-resizes the whole image bilinearly, so a non-square reference is squashed and the
`RandomCrop(512)` after it has nothing to crop."""

from __future__ import annotations

import numpy as np
from jittor import transform
from PIL import Image

from jstyle.io import FITS, read_rgb

from ..tolerance import assert_close


def test_squash_equals_jittor_resize_on_a_non_square_image(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "wide.png"
    Image.fromarray(rng.integers(0, 256, (300, 700, 3), dtype=np.uint8)).save(path)
    assert "squash" in FITS
    got = read_rgb(path, 512, fit="squash")
    baseline = transform.Compose([transform.Resize(512), transform.RandomCrop(512)])  # train.py's first two
    want = np.asarray(baseline(Image.open(path).convert("RGB")))
    assert got.shape == want.shape == (512, 512, 3)
    # the same PIL call on the same pixels: integer-exact (atol 0); another filter (bicubic, Lanczos) or a
    # crop instead of the squash moves pixels of this noise image by tens of levels
    assert_close(got, want, atol=0, what="squash vs jittor.transform.Resize(512)")
    assert np.abs(read_rgb(path, 512).astype(int) - want).max() > 50  # the default fit crops: not the baseline
