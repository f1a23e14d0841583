"""StyleID with DreamBooth (the seed's best method): content from the style's DreamBooth-LoRA, style from
one of its reference images.

Per prompt: generate "{prompt} in style_NN" with the style's LoRA, take the LoRA off, choose a
reference image (`rule`: "first" = the first in sorted order, the same for every prompt; "nearest" =
the reference whose colour signature, per-channel mean/std of a 32x32 thumbnail, is closest to the
content's), and run StyleID with it. A style inversion is computed once per reference and reused.
`run_all.py --method styleid_dreambooth` runs the same steps as separate tasks.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..io import read_rgb
from .reference import choose_reference
from .styleid import StyleIDConfig, invert_style, stylize

__all__ = ["styleid_dreambooth"]


def styleid_dreambooth(pipe, lora_file: str | Path, prompts: Sequence[str], references: Sequence[str | Path],
                       style_id: str, cfg: StyleIDConfig | None = None, rule: str = "first", size: int = 512,
                       num_inference_steps: int = 25, guidance_scale: float = 7.5, seed: int = 0) -> list[np.ndarray]:
    """One uint8 [size, size, 3] image per prompt; the pipeline is left without a LoRA."""
    from .. import lora as L

    cfg = StyleIDConfig() if cfg is None else cfg
    L.apply_lora(pipe, lora_file)
    try:
        contents = [pipe.text_to_image(f"{p} in style_{style_id}", num_inference_steps=num_inference_steps,
                                       guidance_scale=guidance_scale, height=size, width=size,
                                       generator=np.random.default_rng(seed))[0] for p in prompts]
    finally:
        for comp in L.COMPONENTS:
            model = getattr(pipe, comp, None)
            if model is not None:
                L.remove_lora(model)
    features: dict[Path, object] = {}
    out = []
    for content in contents:
        ref = choose_reference(content, [Path(r) for r in references], rule)
        if ref not in features:
            features[ref] = invert_style(pipe, read_rgb(ref, size), cfg)
        out.append(stylize(pipe, content[None], features[ref], cfg)[0])
    return out
