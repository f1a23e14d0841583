"""StyleID with DreamBooth (the seed's best method): content from the style's DreamBooth-LoRA, style from
one of its reference images.

Per prompt: generate the prompt template (jstyle's default "{obj} in style_{style}") with the style's LoRA,
take the LoRA off, choose a reference image (`rule`, jstyle.methods.reference: "first" = the first in sorted
order, "nearest" = the closest colour signature, "random" = a seeded draw per prompt), and run StyleID with it.
A style inversion is computed once per reference and reused.

`jstyleid` is the JStyleID seed's pipeline (SiriusNEO/THU-Computer-Graphics @ 53a2ab0,
StyleTransferDiffusion/JStyleID/run_all.py; docs/methods-sources.md): the bare prompt with the LoRA, 50 DDIM
steps, CFG 7.5, then StyleID's `diffusers` variant (20 steps, 5 layers, AdaIN std + 1e-4) on the base model
with a seeded random reference per prompt. `run_all.py --method styleid_dreambooth` runs the same steps as
separate tasks; JSTYLEID holds its run_all settings.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..data import NOISE_STREAM, image_key
from .reference import choose_reference, read_reference
from .styleid import StyleIDConfig, invert_style, stylize

__all__ = ["styleid_dreambooth", "jstyleid", "JSTYLEID", "JSTYLE_PROMPT"]

JSTYLE_PROMPT = "{obj} in style_{style}"  # jstyle's default content prompt (run_all: the preset's instance prompt)

# run_all settings (RunConfig fields and method setting keys, as the flags) of the JStyleID seed's pipeline;
# StyleID's steps / start_step / layers / AdaIN epsilon are the diffusers variant's defaults (20, 20, 7-11, 1e-4)
JSTYLEID = dict(
    method="styleid_dreambooth",
    prompt_template="{obj}",  # run_all.py::text2image_worker: pipe(prompt, ...), "in style_" commented out
    steps=50,  # num_inference_steps=50
    guidance=7.5,  # the pipeline's default guidance_scale
    seed=0,  # each image's start latents default_rng(image_key(seed, style, obj, 1)) (the seed: unseeded Jittor noise)
    reference="random",  # np.random.randint over the style's images -> the seeded per-prompt draw
    styleid_variant="diffusers",  # run_styleid_diffusers.py with config.py's defaults
    styleid_gamma=0.75,
    styleid_T=1.5,
)


def styleid_dreambooth(pipe, lora_file: str | Path, prompts: Sequence[str], references: Sequence[str | Path],
                       style_id: str, cfg: StyleIDConfig | None = None, rule: str = "first", size: int = 512,
                       num_inference_steps: int = 25, guidance_scale: float = 7.5, seed: int = 0,
                       template: str = JSTYLE_PROMPT, reference_size: int | None | str = "size") -> list[np.ndarray]:
    """One uint8 [size, size, 3] image per object word in `prompts`; the pipeline is left without a LoRA.

    `template` makes the content prompt ({obj}: the object word, {style}: style_id); each content image's
    start latents come from its own default_rng(image_key(seed, style_id, object word, NOISE_STREAM)), as run_all
    draws them. References are read at `reference_size` ("size": `size`; None: native,
    jstyle.methods.reference.read_reference)."""
    from .. import lora as L

    cfg = StyleIDConfig() if cfg is None else cfg
    L.apply_lora(pipe, lora_file)
    try:
        contents = [pipe.text_to_image(template.format(obj=p, style=style_id), num_inference_steps=num_inference_steps,
                                       guidance_scale=guidance_scale, height=size, width=size,
                                       generator=np.random.default_rng(image_key(seed, style_id, p, NOISE_STREAM)))[0]
                    for p in prompts]
    finally:
        L.unload_lora(pipe)
    features: dict[Path, object] = {}
    out = []
    for prompt, content in zip(prompts, contents):
        ref = choose_reference(content, [Path(r) for r in references], rule, seed=seed, style=style_id, prompt=prompt)
        if ref not in features:
            ref_size = size if reference_size == "size" else reference_size
            features[ref] = invert_style(pipe, read_reference(ref, ref_size), cfg)
        out.append(stylize(pipe, content[None], features[ref], cfg)[0])
    return out


def jstyleid(pipe, lora_file: str | Path, prompts: Sequence[str], references: Sequence[str | Path], style_id: str,
             seed: int = 0, size: int = 512, num_inference_steps: int = 50, styleid_steps: int | None = None
             ) -> list[np.ndarray]:
    """The JStyleID seed's pipeline (JSTYLEID): bare prompt with the LoRA, CFG 7.5, then StyleID `diffusers` with
    the seeded random reference per prompt, read at its own size (cv2.imread, as the official diffusers StyleID;
    run_all's --reference-size auto). Step counts are parameters only to keep tests small."""
    cfg = StyleIDConfig(variant="diffusers", steps=styleid_steps)
    return styleid_dreambooth(pipe, lora_file, prompts, references, style_id, cfg, rule="random", size=size,
                              num_inference_steps=num_inference_steps, guidance_scale=7.5, seed=seed,
                              template="{obj}", reference_size=None)
