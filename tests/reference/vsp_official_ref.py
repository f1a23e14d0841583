"""Visual Style Prompting for a real reference as its authors' code runs it, transcribed to PyTorch + diffusers
(checker env, never jstyle's).

    python tests/reference/vsp_official_ref.py MODEL_DIR IN.npz OUT.npz

naver-ai/Visual-Style-Prompting at 723dd4b (the stored snapshot read for this file):
  vsp_real_script.py                         the real-image driver (guidance 7.0, activate_step 50, colour
                                             calibration start 150, window 50, use_prompt_as_null=True);
  pipelines/pipeline_stable_diffusion_xl.py  StableDiffusionXLPipeline.__call__ with `image`: the loop below;
  pipelines/inverted_ve_pipeline.py          swapping_attention, CrossFrameAttnProcessor;
  schedulers/scheduling_ddim.py              DDIMScheduler.step with the fix_traj colour calibration.
Control flow and formulas follow those files (their variable names kept where practical); every change forced by
running them on an SD 1.x/2.x diffusers folder sits in the ADAPTATION block.

IN.npz: reference uint8 [H, W, 3]; latents float32 [B, C, h, w] (the images' start latents, the batch's rows 1..B);
noise float32 [steps, 2, 1, C, h, w] (per step: the VAE posterior sample's eps, the add_noise eps); prompt,
ref_prompt (str); steps, guidance, activate_step, color_cal_start_t, color_cal_window_size.
OUT.npz: latents (the images' clean latents [B, C, h, w]), images (uint8), layers (the processors given
CrossFrameAttnProcessor).
"""

from __future__ import annotations

import sys

import numpy as np
import torch
from diffusers import StableDiffusionPipeline
from diffusers.models.attention_processor import AttnProcessor

# ------------------------------------------------------------------------------------------- ADAPTATION
# 1. Model: an SD 1.x/2.x diffusers folder (StableDiffusionPipeline parts), not SDXL: no text_encoder_2, no
#    added_cond_kwargs (pooled text embeddings, time ids). The uncond context is the empty prompt's encoding
#    (SDXL's encode_prompt zeroes the negative embeddings when negative_prompt is None and
#    force_zeros_for_empty_prompt; SD 2.x has no such setting and was trained with "" as its null prompt).
# 2. Layers: ACTIVATE_LAYER_CANDIDATE[128:140] is every attn1/attn2 processor of SDXL's up_blocks.1, its last
#    up-block with attention; here the same rule: every attn1/attn2 processor of the last up-block with attention.
# 3. Randomness: the official prepare_img_latents draws the VAE posterior sample and the add_noise noise unseeded
#    (generator=None); here both come from IN.npz's `noise` (posterior: mean + std * eps, as latent_dist.sample).
# 4. The reference's prompt is IN.npz's ref_prompt (official: a BLIP-2 caption of the reference), the image's
#    target_prompt its `prompt`; the reference is given at the images' size (official: resized to 1024, SDXL's).
# 5. float32 on CPU (official: fp16 on CUDA).


def swapping_attention(key, value, chunk_size=2):
    """inverted_ve_pipeline.py::swapping_attention (einops rearrange written as reshape/index)."""
    chunk_length = key.size()[0] // chunk_size  # [text-condition, null-condition]
    reference_image_index = [0] * chunk_length  # [0 0 0 0 0]
    key = key.reshape(chunk_size, chunk_length, *key.shape[1:])  # "(b f) d c -> b f d c"
    key = key[:, reference_image_index]  # ref to all
    key = key.reshape(-1, *key.shape[2:])  # "b f d c -> (b f) d c"
    value = value.reshape(chunk_size, chunk_length, *value.shape[1:])
    value = value[:, reference_image_index]  # ref to all
    value = value.reshape(-1, *value.shape[2:])
    return key, value


class CrossFrameAttnProcessor:
    """inverted_ve_pipeline.py::CrossFrameAttnProcessor (attention-map saving dropped: attn_map_save_steps=[])."""

    def __init__(self, unet_chunk_size=2, activate_step_indices=None):
        self.unet_chunk_size = unet_chunk_size
        self.activate_step_indices = activate_step_indices

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None):
        if not hasattr(attn, "attn_map"):
            attn.attn_map = {}
            attn.inference_step = 0
        else:
            attn.inference_step += 1
        batch_size, sequence_length, _ = hidden_states.shape
        attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
        query = attn.to_q(hidden_states)
        is_cross_attention = encoder_hidden_states is not None
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)
        is_in_inference_step = False
        if self.activate_step_indices is not None:
            for activate_step_index in self.activate_step_indices:
                if activate_step_index[0] <= attn.inference_step <= activate_step_index[1]:
                    is_in_inference_step = True
                    break
        # Swapping Attention
        if not is_cross_attention and is_in_inference_step:
            key, value = swapping_attention(key, value, self.unet_chunk_size)
        query = attn.head_to_batch_dim(query)
        key = attn.head_to_batch_dim(key)
        value = attn.head_to_batch_dim(value)
        attention_probs = attn.get_attention_scores(query, key, attention_mask)
        hidden_states = torch.bmm(attention_probs, value)
        hidden_states = attn.batch_to_head_dim(hidden_states)
        hidden_states = attn.to_out[0](hidden_states)  # linear proj
        hidden_states = attn.to_out[1](hidden_states)  # dropout
        if attn.inference_step == 49:
            attn.inference_step = -1
        return hidden_states


def scheduler_step(scheduler, model_output, timestep, sample, fix_traj_t_start, fix_traj_t_end):
    """schedulers/scheduling_ddim.py::DDIMScheduler.step with eta = 0, ref_z0 None, fit_mode "channel"."""
    prev_timestep = timestep - scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    alpha_prod_t = scheduler.alphas_cumprod[timestep]
    alpha_prod_t_prev = scheduler.alphas_cumprod[prev_timestep] if prev_timestep >= 0 else scheduler.final_alpha_cumprod
    beta_prod_t = 1 - alpha_prod_t
    if scheduler.config.prediction_type == "epsilon":
        pred_original_sample = (sample - beta_prod_t ** (0.5) * model_output) / alpha_prod_t ** (0.5)
        pred_epsilon = model_output
    elif scheduler.config.prediction_type == "v_prediction":
        pred_original_sample = (alpha_prod_t**0.5) * sample - (beta_prod_t**0.5) * model_output
        pred_epsilon = (alpha_prod_t**0.5) * model_output + (beta_prod_t**0.5) * sample
    else:
        raise ValueError(scheduler.config.prediction_type)
    if scheduler.config.clip_sample:
        pred_original_sample = pred_original_sample.clamp(-scheduler.config.clip_sample_range,
                                                          scheduler.config.clip_sample_range)
    if fix_traj_t_start > timestep and timestep > fix_traj_t_end:
        ref_z0 = pred_original_sample[0].unsqueeze(0)
        pred_original_sample = pred_original_sample - pred_original_sample.mean(dim=(2, 3), keepdim=True)
        pred_original_sample = pred_original_sample / (pred_original_sample.std(dim=(2, 3), keepdim=True) + 1e-8)
        pred_original_sample = pred_original_sample * ref_z0.std(dim=(2, 3), keepdim=True) + ref_z0.mean(
            dim=(2, 3), keepdim=True)
    pred_sample_direction = (1 - alpha_prod_t_prev) ** (0.5) * pred_epsilon  # std_dev_t = 0
    return alpha_prod_t_prev ** (0.5) * pred_original_sample + pred_sample_direction


def main(model_dir: str, inp: str, out: str) -> None:
    a = np.load(inp)
    pipe = StableDiffusionPipeline.from_pretrained(model_dir, safety_checker=None, requires_safety_checker=False)
    unet, vae, scheduler = pipe.unet, pipe.vae, pipe.scheduler  # a DDIMScheduler folder
    steps, guidance_scale = int(a["steps"]), float(a["guidance"])
    fix_traj_t_start = int(a["color_cal_start_t"])  # pipe.scheduler.fix_traj_t_start = args.color_cal_start_t
    fix_traj_t_end = fix_traj_t_start - int(a["color_cal_window_size"])
    activate_step_indices = [[0, int(a["activate_step"])]]  # create_nested_list(args.activate_step)

    # activate_layer(activate_layer_indices=[[0, 0], [128, 140]], ...): ADAPTATION 2
    with_attn = [i for i, blk in enumerate(unet.up_blocks) if getattr(blk, "attentions", None)]
    active = [n for n in unet.attn_processors if n.startswith(f"up_blocks.{with_attn[-1]}.")]
    unet.set_attn_processor({n: CrossFrameAttnProcessor(2, activate_step_indices) if n in active else AttnProcessor()
                             for n in unet.attn_processors})

    with torch.no_grad():
        def encode(texts):
            ids = pipe.tokenizer(texts, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                                 truncation=True, return_tensors="pt").input_ids
            return pipe.text_encoder(ids)[0]

        init = torch.from_numpy(a["latents"])
        n_images = init.shape[0] + 1  # num_images_per_prompt = len(tar_seeds); row 0 becomes the reference
        # encode_prompt(prompt=ref_prompt) then prompt_embeds[1:] = target_prompt's (and the negatives')
        prompt_embeds = torch.cat([encode([str(a["ref_prompt"])]), encode([str(a["prompt"])] * (n_images - 1))])
        negative_prompt_embeds = encode([""] * n_images)  # ADAPTATION 1
        image = torch.from_numpy(a["reference"].astype(np.float32).transpose(2, 0, 1)[None] / 127.5 - 1.0)
        z0 = image  # self.image_processor.preprocess(image)
        scheduler.set_timesteps(steps)
        timesteps = scheduler.timesteps
        latents = torch.cat([torch.zeros_like(init[:1]), init]) * scheduler.init_noise_sigma
        prompt_embeds = torch.cat([negative_prompt_embeds, prompt_embeds], dim=0)
        noise = torch.from_numpy(a["noise"])
        posterior = vae.encode(z0).latent_dist
        for i, t in enumerate(timesteps):
            # prepare_img_latents(z0, t.repeat(1), 1, ..., add_noise=True): ADAPTATION 3
            init_latents = vae.config.scaling_factor * (posterior.mean + posterior.std * noise[i, 0])
            zt = scheduler.add_noise(init_latents, noise[i, 1], t.repeat(1))
            latents[0] = zt[0]
            latent_model_input = torch.cat([latents] * 2)
            latent_model_input = scheduler.scale_model_input(latent_model_input, t)
            noise_pred = unet(latent_model_input, t, encoder_hidden_states=prompt_embeds).sample
            noise_pred_uncond, noise_pred_text = noise_pred.chunk(2)
            noise_pred = noise_pred_uncond + guidance_scale * (noise_pred_text - noise_pred_uncond)
            noise_pred[0] = noise_pred_text[0]  # use_prompt_as_null
            latents = scheduler_step(scheduler, noise_pred, int(t), latents, fix_traj_t_start, fix_traj_t_end)
        images = vae.decode(latents[1:] / vae.config.scaling_factor).sample
        images = ((images / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    np.savez(out, latents=latents[1:].numpy(), images=images, layers=np.array(active))


if __name__ == "__main__":
    main(*sys.argv[1:4])
