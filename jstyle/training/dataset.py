"""A style folder as DreamBooth training data: images, captions, prompts, augmentation, class images.

<style>/images/*.{png,jpg,...}; optional captions from <style>/images/metadata.jsonl (or
<style>/metadata.jsonl) lines {"file_name": "x.png", "text": "..."} or from x.txt beside x.png.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..data import IMAGE_SUFFIXES, list_images
from ..errors import InputError
from ..io import atomic_write, read_rgb, save_png
from .config import LoRATrainConfig

__all__ = ["Example", "load_style_examples", "load_rgb", "augment", "class_augment", "ensure_class_images",
           "MIN_SIDE"]

MIN_SIDE = 16  # smaller images carry no usable style; refused with the file named


@dataclass
class Example:
    """One training image (RGB uint8 [H, W, 3]) and its prompt."""

    path: Path
    image: np.ndarray
    prompt: str
    obj: str


def load_rgb(path: Path) -> np.ndarray:
    """A training image as RGB uint8 (`jstyle.io.read_rgb`: alpha on white); refused under MIN_SIDE px a side."""
    image = read_rgb(path)
    h, w = image.shape[:2]
    if min(h, w) < MIN_SIDE:
        raise InputError(f"{path}: image is {w}x{h}; at least {MIN_SIDE} px per side is needed")
    return image


def _captions(style_dir: Path, images: list[Path]) -> dict[str, str]:
    caps: dict[str, str] = {}
    for meta in (style_dir / "metadata.jsonl", style_dir / "images" / "metadata.jsonl"):
        if not meta.is_file():
            continue
        for i, line in enumerate(meta.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                caps[Path(row["file_name"]).name] = str(row["text"]).strip()
            except (json.JSONDecodeError, KeyError, TypeError):
                raise InputError(f"{meta}:{i}: expected {{\"file_name\": ..., \"text\": ...}} per line") from None
    for p in images:
        txt = p.with_suffix(".txt")
        if txt.is_file():
            caps[p.name] = txt.read_text(encoding="utf-8").strip()
    return caps


def load_style_examples(cfg: LoRATrainConfig) -> list[Example]:
    """All images of cfg.style_dir (or of every folder of cfg.style_dirs, each named by its own {id}) with their
    instance prompts (template filled, prefix added)."""
    if cfg.style_dirs:
        return [e for d in cfg.style_dirs for e in _folder_examples(cfg, Path(d), Path(d).resolve().name)]
    style_dir = Path(cfg.style_dir)
    return _folder_examples(cfg, style_dir, cfg.style_id if cfg.style_id is not None else style_dir.resolve().name)


def _folder_examples(cfg: LoRATrainConfig, style_dir: Path, style_id: str) -> list[Example]:
    paths = list_images(style_dir)
    if not paths:
        raise InputError(f"{style_dir / 'images'}: no images ({', '.join(IMAGE_SUFFIXES)}) found")
    caps = _captions(style_dir, paths)
    out = []
    for p in paths:
        caption = caps.get(p.name, "")
        obj = caption or p.stem.replace("_", " ").replace("-", " ").strip()
        prompt = cfg.caption_prefix + cfg.instance_template.format(id=style_id, obj=obj, caption=caption or obj)
        out.append(Example(p, load_rgb(p), prompt, obj))
    return out


def augment(image: np.ndarray, cfg: LoRATrainConfig, rng: np.random.Generator) -> np.ndarray:
    """Resize to resolution * resize_margin (bilinear): the short side (resize="crop") or the whole image to a
    square (resize="squash", as jittor.transform.Resize(int(resolution * resize_margin)), = jstyle.io.read_rgb's
    fit="squash"); crop resolution^2 (random or center), optional horizontal flip (p = 0.5); returns float32
    [3, R, R] in [-1, 1]."""
    res = cfg.resolution
    if cfg.resize == "squash":  # int(): JDiffArtFlow's Resize(int(512 * 1.04)) = 532
        nw = nh = max(res, int(res * cfg.resize_margin))
    else:
        short = max(res, int(round(res * cfg.resize_margin)))
        h, w = image.shape[:2]
        scale = short / min(h, w)
        nw, nh = max(short, int(round(w * scale))), max(short, int(round(h * scale)))
    im = np.asarray(Image.fromarray(image).resize((nw, nh), Image.BILINEAR), dtype=np.float32)
    if cfg.crop == "random":
        top, left = int(rng.integers(0, nh - res + 1)), int(rng.integers(0, nw - res + 1))
    else:
        top, left = (nh - res) // 2, (nw - res) // 2
    im = im[top : top + res, left : left + res]
    if cfg.hflip and rng.random() < 0.5:
        im = im[:, ::-1]
    return np.ascontiguousarray(im.transpose(2, 0, 1) / 127.5 - 1.0, dtype=np.float32)


def class_augment(image: np.ndarray, cfg: LoRATrainConfig, rng: np.random.Generator) -> np.ndarray:
    """A class image's augment: the instance one (class_transform="same"), or resized to resolution with a
    centre crop and no flip ("resize")."""
    if cfg.class_transform == "same":
        return augment(image, cfg, rng)
    return augment(image, dataclasses.replace(cfg, resize_margin=1.0, crop="center", hflip=False), rng)


def ensure_class_images(pipe, cfg: LoRATrainConfig, objs: list[str], class_dir: Path,
                        progress: bool = False) -> list[Example]:
    """cfg.num_class_images images of the class prompts, made once by the base model and cached.

    Prompts: cfg.class_prompt for each distinct obj (first-seen order), taken round-robin; image i is
    drawn with np.random.default_rng([seed, 7, i]), from cfg.class_generation_prompt when given (JDiffArtFlow
    makes "A {obj} in the center" and trains on "an image of {obj}"). The cache is reused while its manifest
    matches.
    """
    gen = cfg.class_generation_prompt or cfg.class_prompt
    pairs = list(dict.fromkeys((cfg.class_prompt.format(obj=o, caption=o), gen.format(obj=o, caption=o)) for o in objs))
    prompts, generate = [p for p, _ in pairs], [g for _, g in pairs]
    class_dir.mkdir(parents=True, exist_ok=True)
    manifest = {
        "model": str(getattr(pipe, "path", "")), "prompts": generate, "resolution": cfg.resolution,
        "steps": cfg.class_inference_steps, "guidance": cfg.class_guidance_scale, "seed": cfg.seed,
    }
    mpath = class_dir / "manifest.json"
    old = json.loads(mpath.read_text()) if mpath.is_file() else None
    if old != manifest:
        for f in class_dir.glob("*.png"):
            f.unlink()
        atomic_write(mpath, json.dumps(manifest, indent=2) + "\n")
    out = []
    todo = range(cfg.num_class_images)
    if progress:
        from tqdm import tqdm

        todo = tqdm(todo, desc="class images", leave=False)
    for i in todo:
        prompt = prompts[i % len(prompts)]
        path = class_dir / f"{i:04d}.png"
        if not path.is_file():
            img = pipe.text_to_image(
                generate[i % len(prompts)], num_inference_steps=cfg.class_inference_steps,
                guidance_scale=cfg.class_guidance_scale,
                height=cfg.resolution, width=cfg.resolution, generator=np.random.default_rng([cfg.seed, 7, i]),
            )[0]
            save_png(img, path)
        out.append(Example(path, load_rgb(path), prompt, prompt))
    return out
