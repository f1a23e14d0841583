"""IP-Adapter reference outputs from diffusers/transformers on tiny random weights (checker env only).

    python tests/reference/ip_adapter_ref.py SD1_DIR OUT_DIR

Writes OUT_DIR/image_encoder/ (a seeded tiny transformers CLIPVisionModelWithProjection),
OUT_DIR/ip_adapter.safetensors (random weights in the public ip-adapter_sd15 layout, flat keys
`image_proj.*` / `ip_adapter.{1,3,...}.to_{k,v}_ip.weight`) and OUT_DIR/refs.npz: the image, its
CLIPImageProcessorPil pixel values (and the default torchvision processor's, to measure the gap),
image_embeds, one CFG UNet output with the image tokens, a 3-step StableDiffusionPipeline result
with `ip_adapter_image` from fixed latents, and a StableDiffusionImg2ImgPipeline (DDIM, strength 0.7,
3 steps) result with `ip_adapter_image` and given noise (as tests/reference/sdedit_ref.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

import diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img as img2img_mod
import numpy as np
import torch
from diffusers import DDIMScheduler, StableDiffusionImg2ImgPipeline, StableDiffusionPipeline
from PIL import Image
from safetensors.torch import save_file
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

SIZE = 32  # image encoder input


def main(model: str, out: str) -> None:
    out_dir = Path(out)
    torch.manual_seed(0)
    torch.set_grad_enabled(False)
    pipe = StableDiffusionPipeline.from_pretrained(model, dtype=torch.float32, safety_checker=None)
    unet = pipe.unet
    cross = unet.config.cross_attention_dim
    enc = CLIPVisionModelWithProjection(CLIPVisionConfig(
        image_size=SIZE, patch_size=8, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=4, projection_dim=24)).eval()
    enc.save_pretrained(out_dir / "image_encoder")
    g = torch.Generator().manual_seed(1)
    state = {"image_proj.proj.weight": torch.randn(4 * cross, 24, generator=g) * 0.2,
             "image_proj.proj.bias": torch.randn(4 * cross, generator=g) * 0.1,
             "image_proj.norm.weight": 1 + 0.1 * torch.randn(cross, generator=g),
             "image_proj.norm.bias": 0.1 * torch.randn(cross, generator=g)}
    key_id = 1
    for name in unet.attn_processors:
        if name.endswith("attn2.processor"):
            block = unet.get_submodule(name[: -len(".processor")])
            inner = block.to_k.weight.shape[0]
            for kv in "kv":
                state[f"ip_adapter.{key_id}.to_{kv}_ip.weight"] = torch.randn(inner, cross, generator=g) * 0.3
            key_id += 2
    save_file({k: v.contiguous() for k, v in state.items()}, str(out_dir / "ip_adapter.safetensors"))
    nested = {"image_proj": {}, "ip_adapter": {}}
    for k, v in state.items():
        head, rest = k.split(".", 1)
        nested[head][rest] = v
    fe = CLIPImageProcessorPil(size={"shortest_edge": SIZE}, crop_size={"height": SIZE, "width": SIZE})
    pipe.register_modules(image_encoder=enc, feature_extractor=fe)
    pipe.load_ip_adapter(nested, subfolder="", weight_name="", image_encoder_folder=None)
    pipe.set_ip_adapter_scale(0.7)

    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
    pixels = fe(image, return_tensors="pt").pixel_values
    tall = rng.integers(0, 256, (52, 37, 3), dtype=np.uint8)  # portrait, odd crop offsets
    pixels_tall = fe(tall, return_tensors="pt").pixel_values
    pixels_tv = CLIPImageProcessor(size={"shortest_edge": SIZE}, crop_size={"height": SIZE, "width": SIZE})(
        image, return_tensors="pt").pixel_values
    embeds = enc(pixels).image_embeds
    f = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    latents = torch.from_numpy(rng.standard_normal((1, 4, 16 // f, 16 // f)).astype(np.float32))
    text = pipe.encode_prompt("a cat", "cpu", 1, True, "")
    context = torch.cat([text[1], text[0]])
    image_embeds = [torch.stack([torch.zeros_like(embeds), embeds])]  # [2 (uncond, cond), 1 image, D]
    unet_out = unet(torch.cat([latents, latents]), 500, context,
                    added_cond_kwargs={"image_embeds": image_embeds}).sample
    result = pipe("a cat", ip_adapter_image=image, num_inference_steps=3, guidance_scale=7.5, height=16, width=16,
                  latents=latents.clone(), output_type="np").images
    init = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    post = torch.from_numpy(rng.standard_normal((1, 4, 16 // f, 16 // f)).astype(np.float32))
    noise = torch.from_numpy(rng.standard_normal((1, 4, 16 // f, 16 // f)).astype(np.float32))
    img2img_mod.retrieve_latents = lambda enc_out, generator=None, sample_mode="sample": (
        enc_out.latent_dist.mean + enc_out.latent_dist.std * post)  # the posterior sample with given noise
    img2img_mod.randn_tensor = lambda shape, **kw: noise.reshape(shape).clone()  # the add_noise noise
    i2i = StableDiffusionImg2ImgPipeline.from_pipe(pipe)
    i2i.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    i2i.set_progress_bar_config(disable=True)
    edited = i2i("a cat", image=Image.fromarray(init), ip_adapter_image=image, strength=0.7, num_inference_steps=3,
                 guidance_scale=7.5, output_type="np").images
    np.savez(out_dir / "refs.npz", init=init, posterior_noise=post.numpy(), noise=noise.numpy(),
             img2img=(np.clip(edited, 0, 1) * 255).round().astype(np.uint8),
             image=image, tall=tall, pixels_tall=pixels_tall.numpy(), pixels=pixels.numpy(),
             pixels_torchvision=pixels_tv.numpy(),
             image_embeds=embeds.numpy(), latents=latents.numpy(), unet_out=unet_out.numpy(),
             pipe_images=(result * 255).round().astype(np.uint8), pipe_float=result.astype(np.float32))
    (out_dir / "DONE").write_text("ok\n")


if __name__ == "__main__":
    main(*sys.argv[1:3])
