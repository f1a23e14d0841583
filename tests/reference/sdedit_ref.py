"""diffusers' StableDiffusionImg2ImgPipeline on a tiny folder with given noise (run in the checker env).

usage: sdedit_ref.py MODEL_DIR IN.npz OUT.npz
IN.npz: image uint8 [H, W, 3], prompt (str), strength, steps, guidance, posterior_noise [1, 4, h, w],
noise [1, 4, h, w]. OUT.npz: image uint8 [1, H, W, 3] (round(x * 255) of output_type='np'), and for each
strength s in (0.3, 0.8, 1.0): timesteps_<s> (the steps get_timesteps leaves) and unet_calls_<s> counted on a
short extra run at 10 steps without CFG.
"""

import sys

import diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img as img2img_mod
import numpy as np
import torch
from diffusers import DDIMScheduler, StableDiffusionImg2ImgPipeline
from PIL import Image


def main(model: str, inp: str, out: str) -> None:
    with np.load(inp) as f:
        args = dict(f)
    pipe = StableDiffusionImg2ImgPipeline.from_pretrained(model, torch_dtype=torch.float32, safety_checker=None,
                                                          requires_safety_checker=False)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    post = torch.from_numpy(args["posterior_noise"])
    noise = torch.from_numpy(args["noise"])

    # the posterior sample of the VAE encoding: mean + std * posterior_noise (diffusers draws it with randn_tensor)
    def retrieve_latents(encoder_output, generator=None, sample_mode="sample"):
        dist = encoder_output.latent_dist
        return dist.mode() if sample_mode == "argmax" else dist.mean + dist.std * post

    img2img_mod.retrieve_latents = retrieve_latents
    img2img_mod.randn_tensor = lambda shape, **kw: noise.reshape(shape).clone()  # the add_noise noise
    image = Image.fromarray(args["image"])
    result = pipe(prompt=str(args["prompt"]), image=image, strength=float(args["strength"]),
                  num_inference_steps=int(args["steps"]), guidance_scale=float(args["guidance"]),
                  negative_prompt="", output_type="np").images
    res = {"image": (np.clip(result, 0, 1) * 255).round().astype(np.uint8)}

    calls = []
    unet_forward = pipe.unet.forward
    pipe.unet.forward = lambda *a, **k: (calls.append(1), unet_forward(*a, **k))[1]
    for s in (0.3, 0.8, 1.0):
        pipe.scheduler.set_timesteps(10)
        ts, _ = pipe.get_timesteps(10, s, "cpu")
        res[f"timesteps_{s}"] = ts.numpy()
        calls.clear()
        pipe(prompt=str(args["prompt"]), image=image, strength=s, num_inference_steps=10, guidance_scale=1.0,
             output_type="latent")
        res[f"unet_calls_{s}"] = np.array(len(calls))
    np.savez(out, **res)


if __name__ == "__main__":
    main(*sys.argv[1:4])
