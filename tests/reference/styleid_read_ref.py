"""How the official StyleID diffusers code reads its images, transcribed (checker env, never jstyle's).

    python tests/reference/styleid_read_ref.py IMAGE OUT.npy

jiwoogit/StyleID @ d4ea655, diffusers_implementation/run_styleid_diffusers.py, lines 219-220:
    style_image = cv2.imread(cfg.sty_fn)[:, :, ::-1]
(native size, no crop, no resize; BGR -> RGB), then utils.py::normalize (/ 127.5 - 1) into the VAE.
OUT.npy: the uint8 [H, W, 3] RGB array that normalize receives.
"""

import sys

import cv2
import numpy as np

if __name__ == "__main__":
    style_image = cv2.imread(sys.argv[1])[:, :, ::-1]
    np.save(sys.argv[2], np.ascontiguousarray(style_image))
