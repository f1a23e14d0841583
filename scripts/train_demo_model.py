"""Train the demo model: a tiny Stable Diffusion 2-like model that has learned shapes and textures at 64 px.

    $JSTYLE_CHECKER_PYTHON scripts/train_demo_model.py [--out demo/model] [--seed 0] [--threads 2]

A tool script for the checker env (torch + diffusers; jstyle itself never imports torch). On images
drawn by scripts/demo_shapes.py (circle, square, triangle, star, house in stripes, rings, checks, dots or
flat fill, 8 palettes; captions "a {shape}", "{shape}", "a {shape} in {texture} style", ...) it trains,
in order: the VAE (AutoencoderKL, factor 4: 64 px -> 4 x 16 x 16 latents; MSE + a small KL) on the same shapes
and textures in random colours (as SD's VAE, it can draw any colour), then the UNet (UNet2DConditionModel,
v-prediction as SD 2.x, DDIM/scaled-linear schedule) and the CLIP text encoder together on the latents of the
palette images plus --any-colour-images of the random-colour ones, with the same captions (10% empty, for
classifier-free guidance). The random colours let DDIM inversion (StyleID, DiffStyle) follow an image of any
palette, as SD's does; the demo styles' palettes and textures are still never drawn in training. Writes the diffusers
folder (model_index.json, scheduler, text_encoder, tokenizer, unet, vae; float16 safetensors) atomically,
plus training.json (the command, seed, settings, losses and seconds) and preview.png (one image per
shape x texture caption, made by diffusers from the written folder). Deterministic from --seed and
--threads (CPU reductions depend on the thread count).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT))

import demo_shapes as D  # noqa: E402

VAE_CONFIG = dict(
    in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 64, 64), layers_per_block=1,
    down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
    norm_num_groups=16, sample_size=D.SIZE,
)
UNET_CONFIG = dict(
    sample_size=D.SIZE // 4, in_channels=4, out_channels=4, block_out_channels=(32, 64, 128), layers_per_block=1,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    norm_num_groups=32, attention_head_dim=(1, 2, 4), cross_attention_dim=64, use_linear_projection=True,
)
TEXT_CONFIG = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_hidden_layers=2,
                   hidden_act="gelu", projection_dim=64, max_position_embeddings=77, layer_norm_eps=1e-5)
SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                 clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="v_prediction",
                 timestep_spacing="leading")
WORDS = ("a an the of in on with and style image " + " ".join(D.SHAPES) + " " + " ".join(D.TEXTURES)).split()


def make_pool(n: int, seed: int) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """n training images uint8 [n, 64, 64, 3] and their (shape, texture), from one seeded generator."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for i in range(n):
        shape, tex = D.SHAPES[i % len(D.SHAPES)], list(D.TEXTURES)[(i // len(D.SHAPES)) % len(D.TEXTURES)]
        palette = D.PALETTES[rng.integers(len(D.PALETTES))]
        images.append(D.render(shape, D.TEXTURES[tex], palette, rng))
        labels.append((shape, tex))
    return np.stack(images), labels


def make_any_colour_pool(n: int, seed: int) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """n images uint8 [n, 64, 64, 3] of the shapes and textures in random colours (three uniform RGB draws each)
    and their (shape, texture)."""
    rng = np.random.default_rng([seed, 1])
    images, labels = [], []
    for i in range(n):
        shape, tex = D.SHAPES[i % len(D.SHAPES)], list(D.TEXTURES)[(i // len(D.SHAPES)) % len(D.TEXTURES)]
        palette = tuple(tuple(int(c) for c in rng.integers(0, 256, 3)) for _ in range(3))
        images.append(D.render(shape, D.TEXTURES[tex], palette, rng))
        labels.append((shape, tex))
    return np.stack(images), labels


def caption(shape: str, tex: str, rng: np.random.Generator) -> str:
    """'' (10%, for guidance), else '[a ]{shape}[ in {texture} style]' (the texture named 60% of the time)."""
    if rng.random() < 0.1:
        return ""
    return ("a " if rng.random() < 0.5 else "") + shape + (f" in {tex} style" if rng.random() < 0.6 else "")


def to_tensor(images: np.ndarray):
    import torch

    return torch.from_numpy(images.astype(np.float32) / 127.5 - 1.0).permute(0, 3, 1, 2).contiguous()


def lr_at(step: int, total: int, peak: float, warmup: int = 100) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    p = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * p)))


def train_vae(pool: np.ndarray, steps: int, batch: int, crop: int, rng: np.random.Generator, log):
    """AutoencoderKL on random crops: MSE(reconstruction) + 1e-6 * KL (as SD's VAE, without the GAN/LPIPS)."""
    import torch
    from diffusers import AutoencoderKL

    vae = AutoencoderKL(**VAE_CONFIG)
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    losses = []
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, 1e-3)
        idx = rng.integers(len(pool), size=batch)
        oy, ox = rng.integers(0, D.SIZE - crop + 1, 2)
        x = to_tensor(pool[idx, oy:oy + crop, ox:ox + crop])
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.from_numpy(rng.standard_normal(post.mean.shape).astype(np.float32))
        rec = vae.decode(z).sample
        mse = torch.mean((rec - x) ** 2)
        loss = mse + 1e-6 * post.kl().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(mse.item())
        if step % 100 == 0 or step == steps - 1:
            log(f"vae step {step}/{steps}: mse {np.mean(losses[-100:]):.5f}")
    return vae.eval(), float(np.mean(losses[-100:]))


def encode_pool(vae, pool: np.ndarray):
    import torch

    means, stds = [], []
    with torch.no_grad():
        for i in range(0, len(pool), 128):
            post = vae.encode(to_tensor(pool[i:i + 128])).latent_dist
            means.append(post.mean)
            stds.append(post.std)
    return torch.cat(means), torch.cat(stds)


def train_unet(latents, stds, labels, tokenizer, steps: int, batch: int, rng: np.random.Generator, log):
    """UNet + text encoder on v-prediction: v = sqrt(a) eps - sqrt(1-a) x0 at a random t."""
    import torch
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    vocab = len(tokenizer)
    text_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=vocab, bos_token_id=vocab - 2, eos_token_id=vocab - 1,
                                                pad_token_id=tokenizer.pad_token_id, **TEXT_CONFIG))
    unet = UNet2DConditionModel(**UNET_CONFIG)
    sched = DDPMScheduler(**{k: v for k, v in SCHEDULER.items() if k not in ("set_alpha_to_one", "steps_offset")})
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-2)
    cache: dict[str, torch.Tensor] = {}

    def ids(texts: list[str]) -> torch.Tensor:
        for t in set(texts) - set(cache):
            cache[t] = tokenizer(t, padding="max_length", max_length=77, truncation=True,
                                 return_tensors="pt").input_ids[0]
        return torch.stack([cache[t] for t in texts])

    losses = []
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, 1e-3)
        idx = rng.integers(len(latents), size=batch)
        eps0 = torch.from_numpy(rng.standard_normal((batch, *latents.shape[1:])).astype(np.float32))
        x0 = latents[idx] + stds[idx] * eps0  # a posterior sample, already scaled
        noise = torch.from_numpy(rng.standard_normal(x0.shape).astype(np.float32))
        t = torch.from_numpy(rng.integers(0, 1000, size=batch))
        x_t = sched.add_noise(x0, noise, t)
        target = sched.get_velocity(x0, noise, t)
        context = text_encoder(ids([caption(*labels[i], rng) for i in idx])).last_hidden_state
        loss = torch.mean((unet(x_t, t, context).sample - target) ** 2)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(loss.item())
        if step % 100 == 0 or step == steps - 1:
            log(f"unet step {step}/{steps}: loss {np.mean(losses[-100:]):.4f}")
    return unet.eval(), text_encoder.eval(), float(np.mean(losses[-100:]))


def preview(folder: Path, out: Path) -> None:
    """One image per (shape, texture) caption from the written folder (diffusers, 25 DDIM steps, CFG 5)."""
    import torch
    from diffusers import StableDiffusionPipeline
    from PIL import Image

    pipe = StableDiffusionPipeline.from_pretrained(folder, torch_dtype=torch.float32, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    rows = []
    for tex in D.TEXTURES:
        prompts = [f"a {s} in {tex} style" for s in D.SHAPES]
        g = torch.Generator().manual_seed(0)
        images = pipe(prompts, height=D.SIZE, width=D.SIZE, num_inference_steps=25, guidance_scale=5.0,
                      generator=g, output_type="np").images
        rows.append(np.concatenate(list((images * 255).round().astype(np.uint8)), axis=1))
    Image.fromarray(np.concatenate(rows, axis=0)).save(out)


def save(folder: Path, vae, unet, text_encoder, tokenizer_dir: Path, scaling: float) -> None:
    import torch
    from diffusers import DDIMScheduler, StableDiffusionPipeline
    from transformers import CLIPTokenizer

    vae.register_to_config(scaling_factor=scaling)
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=CLIPTokenizer.from_pretrained(tokenizer_dir), unet=unet,
        scheduler=DDIMScheduler(**SCHEDULER), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.to(torch.float16)  # 2 bytes a weight on disk; jstyle and diffusers load them as float32
    pipe.save_pretrained(folder, safe_serialization=True)
    shutil.rmtree(folder / "tokenizer")
    shutil.copytree(tokenizer_dir, folder / "tokenizer")  # vocab.json + merges.txt, as real SD folders
    pipe.to(torch.float32)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "demo" / "model")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (the result depends on it)")
    p.add_argument("--images", type=int, default=6000, help="training images drawn")
    p.add_argument("--vae-steps", type=int, default=1200)
    p.add_argument("--unet-steps", type=int, default=4400)
    p.add_argument("--any-colour-images", type=int, default=3000,
                   help="random-colour images added to the UNet's training images (0: the 8 palettes only)")
    p.add_argument("--batch", type=int, default=24)
    args = p.parse_args(argv)

    import torch

    from jstyle.tiny import write_toy_vocab

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    t0 = time.time()

    def log(msg: str) -> None:
        print(f"[{time.time() - t0:6.0f} s] {msg}", flush=True)

    rng = np.random.default_rng(args.seed)
    pool, labels = make_pool(args.images, args.seed)
    log(f"{len(pool)} training images drawn")
    any_colour, any_labels = make_any_colour_pool(max(args.images, args.any_colour_images), args.seed)
    vae, vae_mse = train_vae(any_colour[:args.images], args.vae_steps, 16, 32, rng, log)
    t_vae = time.time() - t0
    mean, std = encode_pool(vae, pool)
    scaling = float(1.0 / mean.std())  # latents of unit variance, as SD's 0.18215 was chosen
    log(f"latents {tuple(mean.shape[1:])}, scaling_factor {scaling:.4f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{args.out.name}.", dir=args.out.parent))
    try:
        write_toy_vocab(tmp / "tok", WORDS, pad_token="!")
        from transformers import CLIPTokenizer

        tokenizer = CLIPTokenizer.from_pretrained(tmp / "tok")
        if args.any_colour_images:
            extra_mean, extra_std = encode_pool(vae, any_colour[:args.any_colour_images])
            mean, std = torch.cat([mean, extra_mean]), torch.cat([std, extra_std])
            labels = labels + any_labels[:args.any_colour_images]
        unet, text_encoder, unet_loss = train_unet(mean * scaling, std * scaling, labels, tokenizer,
                                                   args.unet_steps, args.batch, rng, log)
        seconds, cpu_seconds = time.time() - t0, time.process_time()
        model = tmp / "model"
        save(model, vae, unet, text_encoder, tmp / "tok", scaling)
        record = dict(
            command=f"$JSTYLE_CHECKER_PYTHON scripts/train_demo_model.py --seed {args.seed} --threads {args.threads} "
                    f"--images {args.images} --any-colour-images {args.any_colour_images} --vae-steps {args.vae_steps} "
                    f"--unet-steps {args.unet_steps} --batch {args.batch}",
            seed=args.seed, threads=args.threads, images=args.images, any_colour_images=args.any_colour_images,
            vae_steps=args.vae_steps,
            unet_steps=args.unet_steps, batch=args.batch, prediction_type="v_prediction", resolution=D.SIZE,
            latent=f"4x{D.SIZE // 4}x{D.SIZE // 4}", vae_final_mse=round(vae_mse, 6),
            unet_final_loss=round(unet_loss, 5), scaling_factor=scaling, train_seconds=round(seconds),
            train_cpu_seconds=round(cpu_seconds),
            vae_seconds=round(t_vae), torch=torch.__version__,
            what="a toy that has learned 5 shapes x 5 textures at 64 px, in 8 palettes and random colours; "
                 "not Stable Diffusion",
        )
        (model / "training.json").write_text(json.dumps(record, indent=2) + "\n")
        preview(model, model / "preview.png")
        if args.out.exists():
            shutil.rmtree(args.out)
        os.replace(model, args.out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"wrote {args.out} (trained in {seconds:.0f} s, {cpu_seconds:.0f} CPU s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
