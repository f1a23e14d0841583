"""StyleID with DreamBooth as the JStyleID seed ran it, transcribed to PyTorch + diffusers (checker env).

    python tests/reference/jstyleid_ref.py MODEL_DIR IN.npz OUT.npz

Source: SiriusNEO/THU-Computer-Graphics at 53a2ab0 (the commit that wrote results_B/),
StyleTransferDiffusion/JStyleID/run_all.py::text2image_worker and the script it queues per prompt,
JStyleID/diffusers_implementation/run_styleid_diffusers.py (a Jittor port of jiwoogit/StyleID's diffusers
implementation: config.py defaults sd_version "2.1", ddim_steps 20, layers 7..11, gamma 0.75, T 1.5;
its hooks merged into one, same maths). Per prompt of a style:
  1. content = pipe(prompt, num_inference_steps=50, width=512, height=512) with the style's LoRA loaded
     (the bare prompt; the "{prompt} in style_{taskid}" line is commented out), guidance 7.5 (the default);
  2. StyleID, official diffusers variant, on the base model with one reference image of the style drawn
     at random (np.random.randint over the style's .png files).
Stage 2 reuses tests/reference/styleid_official_ref.py (variant 'diffusers').

IN.npz: prompts (str [P]), latents [P, 4, h, w] (start latents of step 1), references uint8 [R, H, W, 3]
(the style's images in sorted file-name order), style (str, the style's folder name), lora (str, a
LoRA file or folder; '' = none); optional: seed (0), steps (50), guidance (7.5), styleid_steps (20).
OUT.npz: contents uint8 [P, H, W, 3], chosen int [P] (index into references), images uint8 [P, H, W, 3].
"""

from __future__ import annotations

import sys
import zlib

import numpy as np
import torch
from styleid_official_ref import load, stylize


# ------------------------------------------------------------------------------------------- ADAPTATION
# - The reference image: the seed draws np.random.randint(0, len(sty_files)) from numpy's global RNG,
#   unseeded, in a fresh process per prompt, over os.listdir order filtered by '.png' in the name: not
#   reproducible. The stand-in is a seeded draw, per prompt, independent of task order:
#   rng = np.random.default_rng([seed, crc32(style), crc32(prompt)]) (crc32 of the UTF-8 bytes),
#   index = rng.integers(0, len(references)) over the references sorted by file name.
# - The content's start latents are given (the seed: JDiffusion's unseeded Jittor randn).
# - float32 throughout (the seed: fp32 content pipeline, fp16 StyleID); the model's own prediction type
#   picks the inversion formula (the seed's sd_version "2.1" = v-prediction).
def pick_reference(n_references: int, seed: int, style: str, prompt: str) -> int:
    """Index of the reference image StyleID uses for this prompt of this style."""
    rng = np.random.default_rng([seed, zlib.crc32(style.encode("utf-8")), zlib.crc32(prompt.encode("utf-8"))])
    return int(rng.integers(0, n_references))
# ----------------------------------------------------------------------------------------- /ADAPTATION


# SiriusNEO/THU-Computer-Graphics 53a2ab0, StyleTransferDiffusion/JStyleID/run_all.py::text2image_worker
def content_images(pipe, prompts, latents, lora: str, steps: int = 50, guidance: float = 7.5) -> np.ndarray:
    if lora:
        pipe.load_lora_weights(lora)
    try:
        out = []
        for prompt, z in zip(prompts, latents):
            # image = pipe(prompt + f" in style_{taskid}", num_inference_steps=25, ...)  (commented out there)
            f = pipe.vae_scale_factor  # 8 on SD: 512 x 512 there
            image = pipe(prompt, num_inference_steps=steps, guidance_scale=guidance, height=f * z.shape[-2],
                         width=f * z.shape[-1], latents=torch.from_numpy(z[None]), output_type="np").images[0]
            out.append((image * 255).round().astype(np.uint8))  # image.save(temp_img) -> cv2.imread
    finally:
        if lora:
            pipe.unload_lora_weights()  # stage 2 runs in a new process on the base model
    return np.stack(out)


# SiriusNEO/THU-Computer-Graphics 53a2ab0, JStyleID/diffusers_implementation/run_styleid_diffusers.py::__main__
def styleid_per_prompt(pipe, contents, prompts, references, style: str, seed: int, styleid_steps: int = 20):
    chosen, images = [], []
    for content, prompt in zip(contents, prompts):
        k = pick_reference(len(references), seed, style, prompt)
        out = stylize(pipe, "diffusers", content[None], references[k], steps=styleid_steps)
        chosen.append(k)
        images.append(out["images"][0])
    return np.array(chosen), np.stack(images)


def main(model: str, inp: str, out: str) -> None:
    torch.set_grad_enabled(False)
    with np.load(inp) as f:
        cfg = dict(f)
    prompts = [str(p) for p in cfg["prompts"]]
    seed = int(cfg.get("seed", 0))
    pipe = load(model)
    pipe.set_progress_bar_config(disable=True)
    contents = content_images(pipe, prompts, cfg["latents"], str(cfg["lora"]), int(cfg.get("steps", 50)),
                              float(cfg.get("guidance", 7.5)))
    chosen, images = styleid_per_prompt(pipe, contents, prompts, cfg["references"], str(cfg["style"]), seed,
                                        int(cfg.get("styleid_steps", 20)))
    np.savez(out, contents=contents, chosen=chosen, images=images)


if __name__ == "__main__":
    main(*sys.argv[1:4])
