"""Build tiny seeded SD1-like and SD2-like pipelines with diffusers/transformers and save
reference outputs for the Jittor parity tests. Runs in the checker env (torch), never jstyle's.

    python tests/reference/make_tiny.py OUT_DIR

OUT_DIR/{sd1,sd2}/ are diffusers folders (safetensors); OUT_DIR/{sd1,sd2}_refs.npz hold the
inputs and the reference outputs; OUT_DIR/tokenizer_refs.json holds transformers' token ids.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

PIPE_PROMPT = "a Dolphin in style_03"
TRICKY_PROMPTS = [
    "a Dolphin in style_03",
    "An image of a LION, in the style of Monet!!!",
    "café déjà-vu — naïve façade… ½ ™ 東京 😀",
    "  multiple   spaces\tand\nnewlines  ",
    "it's don't we'll 123 4.5 #hashtag @user https://x.y/z?q=1",
    "<|startoftext|> literal special tokens <|endoftext|>",
    "word " * 100,
    "",
]


def bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def write_clip_vocab(out: Path) -> tuple[Path, Path]:
    """The real CLIP BPE vocabulary (49408 tokens), rebuilt from the merges shipped on PyPI."""
    spec = importlib.util.find_spec("clip")
    gz = Path(spec.submodule_search_locations[0]) / "bpe_simple_vocab_16e6.txt.gz"
    merges = gzip.open(gz).read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    merges = [tuple(m.split()) for m in merges]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False))
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    return out / "vocab.json", out / "merges.txt"


CONFIGS = {
    "sd1": dict(
        text=dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=3,
                  hidden_act="quick_gelu", projection_dim=32),
        pad_token="<|endoftext|>",
        unet=dict(attention_head_dim=8, cross_attention_dim=32, use_linear_projection=False,
                  upcast_attention=False),
        prediction_type="epsilon",
    ),
    "sd2": dict(
        text=dict(hidden_size=48, intermediate_size=61, num_attention_heads=4, num_hidden_layers=3,
                  hidden_act="gelu", projection_dim=48),
        pad_token="!",
        unet=dict(attention_head_dim=(2, 4), cross_attention_dim=48, use_linear_projection=True,
                  upcast_attention=True),
        prediction_type="v_prediction",
    ),
}


def build(kind: str, out: Path, vocab: Path, merges: Path) -> None:
    cfg = CONFIGS[kind]
    torch.manual_seed(0 if kind == "sd1" else 1)
    tokenizer = CLIPTokenizer(str(vocab), str(merges), pad_token=cfg["pad_token"], model_max_length=77)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, max_position_embeddings=77, layer_norm_eps=1e-5,
        bos_token_id=49406, eos_token_id=49407, pad_token_id=tokenizer.pad_token_id, **cfg["text"],
    )).eval()
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), norm_num_groups=32, **cfg["unet"],
    ).eval()
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4, norm_num_groups=32, sample_size=32,
    ).eval()
    # Random weights for every parameter (diffusers zero-inits some output layers).
    with torch.no_grad():
        for model in (unet, vae, text_encoder):
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.05)
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
        set_alpha_to_one=False, steps_offset=1, prediction_type=cfg["prediction_type"],
    )
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(out / kind, safe_serialization=True)
    # Real SD folders (saved by transformers 4) carry vocab.json + merges.txt + special_tokens_map.json.
    tok_dir = out / kind / "tokenizer"
    for f in (vocab, merges):
        (tok_dir / f.name).write_bytes(f.read_bytes())
    (tok_dir / "special_tokens_map.json").write_text(json.dumps({
        "bos_token": {"content": "<|startoftext|>", "lstrip": False, "normalized": True,
                      "rstrip": False, "single_word": False},
        "eos_token": {"content": "<|endoftext|>", "lstrip": False, "normalized": True,
                      "rstrip": False, "single_word": False},
        "pad_token": cfg["pad_token"],
        "unk_token": {"content": "<|endoftext|>", "lstrip": False, "normalized": True,
                      "rstrip": False, "single_word": False},
    }, indent=2))

    rng = np.random.default_rng(123)
    ids = rng.integers(0, 49406, size=(2, 77))
    ids[:, 0] = 49406
    ids[0, 10] = 49407
    ids[1, 76] = 49407
    ids[0, 11:] = tokenizer.pad_token_id
    sample = rng.standard_normal((2, 4, 8, 8)).astype(np.float32)
    timesteps = np.array([10, 980], dtype=np.int64)
    context = rng.standard_normal((2, 77, unet.config.cross_attention_dim)).astype(np.float32)
    image = np.clip(rng.standard_normal((1, 3, 32, 32)) * 0.5, -1, 1).astype(np.float32)
    latent = rng.standard_normal((1, 4, 8, 8)).astype(np.float32)
    with torch.no_grad():
        t_out = text_encoder(torch.from_numpy(ids), output_hidden_states=True)
        u_out = unet(torch.from_numpy(sample), torch.from_numpy(timesteps),
                     encoder_hidden_states=torch.from_numpy(context)).sample
        u_scalar = unet(torch.from_numpy(sample), 500, encoder_hidden_states=torch.from_numpy(context)).sample
        u_odd = unet(torch.from_numpy(sample[:1, :, :7, :5]), 10,
                     encoder_hidden_states=torch.from_numpy(context[:1])).sample
        post = vae.encode(torch.from_numpy(image)).latent_dist
        dec = vae.decode(torch.from_numpy(latent)).sample
    np.savez(
        out / f"{kind}_refs.npz",
        input_ids=ids, text_last_hidden_state=t_out.last_hidden_state.numpy(),
        text_pooler_output=t_out.pooler_output.numpy(),
        text_penultimate=t_out.hidden_states[-2].numpy(),
        unet_sample=sample, unet_timesteps=timesteps, unet_context=context, unet_out=u_out.numpy(),
        unet_out_t500=u_scalar.numpy(), unet_out_odd=u_odd.numpy(),
        vae_image=image, vae_mean=post.mean.numpy(), vae_logvar=post.logvar.numpy(),
        vae_latent=latent, vae_decoded=dec.numpy(),
    )
    # Whole pipeline: prompt embeddings and a short DDIM + CFG run from fixed latents.
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        embeds, _ = pipe.encode_prompt(PIPE_PROMPT, "cpu", 1, False)
        start = torch.from_numpy(rng.standard_normal((1, 4, 8, 8)).astype(np.float32))
        images = pipe(PIPE_PROMPT, height=16, width=16, num_inference_steps=3, guidance_scale=7.5,
                      latents=start, output_type="np").images
    with np.load(out / f"{kind}_refs.npz") as f:
        arrays = dict(f)
    np.savez(out / f"{kind}_refs.npz", **arrays, pipe_prompt_embeds=embeds.numpy(),
             pipe_latents=start.numpy(), pipe_images=images)
    # Half-precision variant files, as diffusers writes them.
    # Only the weight files are copied: save_pretrained would also rewrite config.json with dtype float16.
    if kind == "sd1":
        half = out / "sd1_fp16_tmp"
        pipe.to(torch.float16).save_pretrained(half, safe_serialization=True, variant="fp16")
        for f in half.glob("*/*.fp16.safetensors"):
            (out / kind / f.parent.name / f.name).write_bytes(f.read_bytes())
        shutil.rmtree(half)


SCHEDULER_CASES = {  # name -> DDIMScheduler kwargs
    "eps_leading": dict(prediction_type="epsilon", timestep_spacing="leading"),
    "v_trailing": dict(prediction_type="v_prediction", timestep_spacing="trailing"),
    "sample_linspace_clip": dict(prediction_type="sample", timestep_spacing="linspace", clip_sample=True),
}


def scheduler_refs(out: Path) -> None:
    """DDIM timesteps, step outputs (eta 0 and 0.5), add_noise and get_velocity for each case."""
    rng = np.random.default_rng(7)
    sample = rng.standard_normal((2, 4, 8, 8)).astype(np.float32)
    model_out = rng.standard_normal((2, 4, 8, 8)).astype(np.float32)
    noise = rng.standard_normal((2, 4, 8, 8)).astype(np.float32)
    arrays = {"sample": sample, "model_out": model_out, "noise": noise}
    for name, kwargs in SCHEDULER_CASES.items():
        kwargs = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                      set_alpha_to_one=False, steps_offset=1, **{"clip_sample": False, **kwargs})
        sched = DDIMScheduler(**kwargs)
        for n in (25, 50):
            sched.set_timesteps(n)
            arrays[f"{name}_timesteps_{n}"] = sched.timesteps.numpy()
        sched.set_timesteps(25)
        for i in (0, 12, 24):
            t = int(sched.timesteps[i])
            for eta in (0.0, 0.5):
                o = sched.step(torch.from_numpy(model_out), t, torch.from_numpy(sample), eta=eta,
                               variance_noise=torch.from_numpy(noise))
                arrays[f"{name}_step_{i}_eta{eta}"] = o.prev_sample.numpy()
                arrays[f"{name}_x0_{i}_eta{eta}"] = o.pred_original_sample.numpy()
        t = torch.tensor([10, 999])
        arrays[f"{name}_add_noise"] = sched.add_noise(torch.from_numpy(sample), torch.from_numpy(noise), t).numpy()
        arrays[f"{name}_velocity"] = sched.get_velocity(torch.from_numpy(sample), torch.from_numpy(noise), t).numpy()
    np.savez(out / "scheduler_refs.npz", **arrays)


def main(out: Path) -> None:
    torch.set_num_threads(2)
    vocab, merges = write_clip_vocab(out / "clip_vocab")
    for kind in CONFIGS:
        build(kind, out, vocab, merges)
    refs = {}
    for kind in CONFIGS:
        tok = CLIPTokenizer.from_pretrained(out / kind / "tokenizer")
        refs[kind] = {
            "padded": tok(TRICKY_PROMPTS, padding="max_length", max_length=77, truncation=True)["input_ids"],
            "unpadded": tok(TRICKY_PROMPTS, truncation=True, max_length=77)["input_ids"],
        }
    refs["prompts"] = TRICKY_PROMPTS
    scheduler_refs(out)
    (out / "tokenizer_refs.json").write_text(json.dumps(refs, ensure_ascii=False))
    (out / "DONE").write_text("ok\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
