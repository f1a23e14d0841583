"""Each method moves the style the right way, measured on the demo model (demo/model) and the demo styles.

Style = the checker's colour-histogram score against the style's references (tests/style_measures.py,
transcribed from checker/hist.py); content = the shape's mask IoU (the foreground against the shape's
template, or against the content image's foreground). The demo model is a toy trained on five shapes in
five textures and eight palettes at 64 px (scripts/train_demo_model.py); the demo styles' textures and
palettes are not among them (scripts/make_demo_data.py). Every bound below names the value measured on
this machine (CPU) beside it; the bounds leave room for other CPUs' rounding, not for a method that does
nothing: each "rises" is asserted with a margin, and the baseline it beats is measured in the same test.
"""

from __future__ import annotations

import json
from pathlib import Path

import jittor as jt
import numpy as np
import pytest
from PIL import Image

from jstyle import lora as L
from jstyle.methods.diffstyle import DiffStyleConfig, diffstyle
from jstyle.methods.sdedit import img2img, mean_image
from jstyle.methods.styleid import StyleIDConfig, invert_style, stylize
from jstyle.pipeline import load_pipeline
from jstyle.train_lora import train_lora
from jstyle.training import LoRATrainConfig

from ..style_measures import best_shape, foreground, hist_score, mask_iou, shape_iou
from ..tolerance import UINT8, assert_at_most
from .conftest import run_reference

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "demo" / "model"
STYLE = ROOT / "demo" / "data" / "00"  # lime/pink zigzags on purple: neither texture nor palette seen in training
SIZE = 64
STEPS = 20
SHAPES = ("circle", "square", "triangle", "star", "house")


def _refs() -> list[np.ndarray]:
    return [np.asarray(Image.open(p).convert("RGB")) for p in sorted((STYLE / "images").glob("*.png"))]


@pytest.fixture(scope="module")
def pipe():
    return load_pipeline(MODEL)


@pytest.fixture(scope="module")
def content(pipe) -> dict[str, np.ndarray]:
    """The base model's "a square" (seed 0): the content image of the injection methods."""
    return {s: pipe.text_to_image(f"a {s}", num_inference_steps=STEPS, guidance_scale=5.0, height=SIZE, width=SIZE,
                                  generator=np.random.default_rng(0))[0] for s in ("square",)}


def test_demo_model_matches_diffusers(pipe, tmp_path):
    latents = np.random.default_rng(3).standard_normal((1, 4, SIZE // 4, SIZE // 4)).astype(np.float32)
    np.save(tmp_path / "latents.npy", latents)
    code = (
        "import sys, numpy as np, torch\n"
        "from diffusers import StableDiffusionPipeline\n"
        "p = StableDiffusionPipeline.from_pretrained(sys.argv[1], dtype=torch.float32, safety_checker=None)\n"
        "p.set_progress_bar_config(disable=True)\n"
        "x = torch.from_numpy(np.load(sys.argv[2]))\n"
        "im = p('a star in dots style', height=64, width=64, num_inference_steps=10, guidance_scale=5.0,\n"
        "       latents=x, output_type='np').images\n"
        "np.save(sys.argv[3], im)\n"
    )
    run_reference(None, str(MODEL), str(tmp_path / "latents.npy"), str(tmp_path / "ref.npy"), code=code)
    ref = np.load(tmp_path / "ref.npy")
    ours = pipe.text_to_image("a star in dots style", num_inference_steps=10, guidance_scale=5.0, height=SIZE,
                              width=SIZE, latents=jt.array(latents))
    # as test_pipeline's parity: uint8 rounding is up to 0.5/255, the float32 error of the tiny models far below;
    # the spec's rule: mean <= 1/255, max <= 2/255 (measured: mean 0.25/255, max 0.5/255)
    diff = np.abs(ours / 255.0 - ref)
    print("FIGURES parity", diff.mean() * 255, diff.max() * 255)
    assert_at_most(diff.mean(), UINT8 / 255, "mean image difference vs diffusers")
    assert_at_most(diff.max(), 2 * UINT8 / 255, "max image difference vs diffusers")


def _shape_images(pipe) -> np.ndarray:
    return pipe.text_to_image([f"a {s}" for s in SHAPES], num_inference_steps=STEPS, guidance_scale=5.0,
                              height=SIZE, width=SIZE, generator=[np.random.default_rng(i) for i in range(5)])


@pytest.mark.xfail(strict=True, raises=AssertionError,
                   reason="demo model under-trained (4400 UNet steps): measured 3 of 5 shapes "
                   "recognised (triangle, star, house; circle -> house, square -> circle)")
def test_every_prompted_shape_is_recognised(pipe):
    images = _shape_images(pipe)
    found = [best_shape(im) for im in images]
    print("FIGURES base best shapes", found, [round(shape_iou(im, s), 3) for im, s in zip(images, SHAPES)])
    # bound: 4 of 5 prompted shapes are the best-fitting template of their image (measured 3)
    assert sum(f == s for f, s in zip(found, SHAPES)) >= 4, found


def _styleid(pipe, content, **kw) -> np.ndarray:
    cfg = StyleIDConfig(steps=STEPS, start_step=STEPS - 1)
    features = invert_style(pipe, _refs()[0], cfg)  # the style's first reference (a circle)
    return stylize(pipe, content["square"][None], features, StyleIDConfig(steps=STEPS, start_step=STEPS - 1, **kw))[0]


def test_styleid_moves_the_content_towards_the_style_and_keeps_its_shape(pipe, content):
    refs, c = _refs(), content["square"]
    out = _styleid(pipe, content, gamma=0.75)
    before, after = hist_score([c], refs), hist_score([out], refs)
    iou = mask_iou(foreground(out), foreground(c))
    print("FIGURES styleid", before, after, iou)
    # measured: content 0.102 -> StyleID 0.166 (+0.064; gamma 0.75, T 1.5); bound: at least +0.04
    assert after >= before + 0.04, (before, after)
    # measured: IoU 0.89 of the output's mask with the content's; bound 0.7
    assert iou >= 0.7, iou


@pytest.mark.xfail(strict=True, raises=AssertionError,
                   reason="on the demo model the score falls instead: measured gamma 0.9/0.5 -> "
                   "0.182/0.150, T 1/2 -> 0.230/0.157")
def test_styleid_score_rises_with_lower_gamma_and_higher_T(pipe, content):
    refs = _refs()
    s_gamma = [hist_score([_styleid(pipe, content, gamma=g)], refs) for g in (0.9, 0.5)]
    s_t = [hist_score([_styleid(pipe, content, gamma=0.75, T=t)], refs) for t in (1.0, 2.0)]
    print("FIGURES styleid gamma/T", s_gamma, s_t)
    # bound: gamma 0.9 -> 0.5 and T 1 -> 2 each raise the score by >= 0.01
    assert s_gamma[1] >= s_gamma[0] + 0.01 and s_t[1] >= s_t[0] + 0.01, (s_gamma, s_t)


@pytest.mark.xfail(strict=True, raises=AssertionError,
                   reason="on the demo model the IoU with the content's mask falls instead: measured "
                   "0.636/0.405/0.384 at gamma 0/0.5/1 (histogram score 0.050/0.170/0.152)")
def test_diffstyle_moves_the_content_shape_into_the_style_rendering_as_gamma_rises(pipe, content):
    style = _refs()[2]  # a star: a circle's mask already covers 0.785 of the square's
    c = content["square"]
    ious, scores = [], []
    for gamma in (0.0, 0.5, 1.0):
        out = diffstyle(pipe, c[None], style, DiffStyleConfig(gamma=gamma, t_boost=0, steps=STEPS,
                                                             inv_steps=STEPS))[0]
        ious.append(mask_iou(foreground(out), foreground(c)))
        scores.append(hist_score([out], _refs()))
    # bound: the IoU with the content's mask rises with gamma, by >= 0.2 from 0 to 1
    print("FIGURES diffstyle", ious, scores)
    assert ious[0] < ious[1] < ious[2] and ious[2] >= ious[0] + 0.2, ious


# last: the LoRA stays in the pipeline from here to the module's end
@pytest.fixture(scope="module")
def lora_run(pipe, tmp_path_factory):
    """Base vs LoRA generations of the style's prompts (same seeds); the LoRA stays in `pipe` until the module ends."""
    prompts = list(json.loads((STYLE / "prompt.json").read_text()).values())  # Square, Triangle
    def generate():
        return pipe.text_to_image([f"{p} in style_00" for p in prompts], num_inference_steps=STEPS, guidance_scale=5.0,
                                  height=SIZE, width=SIZE, generator=[np.random.default_rng(i) for i in range(2)])
    base = generate()
    cfg = LoRATrainConfig(style_dir=str(STYLE), resolution=SIZE, instance_template="{obj} in style_{id}", rank=8,
                          learning_rate=1e-3, max_train_steps=200, output_dir=str(tmp_path_factory.mktemp("lora")),
                          progress=False)
    train_lora(cfg, pipe=pipe)
    tuned = generate()
    yield prompts, base, tuned
    L.remove_lora(pipe.unet)


def test_dreambooth_lora_raises_the_histogram_score(lora_run):
    prompts, base, tuned = lora_run
    refs = _refs()
    before, after = hist_score(base, refs), hist_score(tuned, refs)
    print("FIGURES lora hist", before, after)
    # measured: base 0.053 -> LoRA 0.207 (+0.154; rank 8, lr 1e-3, 200 steps; 60 steps: 0.019); bound: +0.08
    assert after >= before + 0.08, (before, after)


@pytest.mark.xfail(strict=True, raises=AssertionError,
                   reason="under-trained demo model: the LoRA's Square is read as a circle (IoU with the "
                   "square template 0.73), its Triangle as a triangle (0.82)")
def test_dreambooth_lora_keeps_the_prompted_shape(lora_run):
    prompts, base, tuned = lora_run
    found = [best_shape(im) for im in tuned]
    print("FIGURES lora shapes", found, [shape_iou(im, p) for im, p in zip(tuned, prompts)])
    # bound: each prompted shape (Square, Triangle) is the best-fitting template of its LoRA image
    assert found == [p.lower() for p in prompts], found


@pytest.fixture(scope="module")
def sdedit_scores(pipe, lora_run) -> list[float]:
    """Histogram scores of SDEdit from the mean reference at strength 0.3, 0.6, 0.9 (the LoRA in the pipe)."""
    init = mean_image(sorted((STYLE / "images").glob("*.png")), SIZE)
    refs = _refs()
    scores = []
    for strength in (0.3, 0.6, 0.9):
        out = img2img(pipe, init, ["Square in style_00"], strength=strength, num_inference_steps=STEPS,
                      guidance_scale=5.0, generator=np.random.default_rng(0))
        scores.append(hist_score(out, refs))
    print("FIGURES sdedit", scores)
    return scores


def test_sdedit_from_the_mean_reference_carries_the_style(lora_run, sdedit_scores):
    _, base, _ = lora_run
    floor = hist_score(base, _refs())
    # measured: 0.615, 0.551, 0.225 at strength 0.3, 0.6, 0.9 against the base model's 0.053 for the style's
    # prompts; bound: every strength at least 0.1 above the base
    assert min(sdedit_scores) >= floor + 0.1, (floor, sdedit_scores)


@pytest.mark.xfail(strict=True, raises=AssertionError,
                   reason="the mean reference already has the style's colours (the demo VAE draws them): the "
                   "score falls with strength, measured 0.615/0.551/0.225 at 0.3/0.6/0.9")
def test_sdedit_from_the_mean_reference_rises_with_strength(sdedit_scores):
    # bound: 0.3 -> 0.9 by >= 0.01
    assert sdedit_scores[2] >= sdedit_scores[0] + 0.01, sdedit_scores
