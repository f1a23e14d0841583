"""Each method moves the style the right way, measured on the demo model (demo/model) and the demo styles.

Style = the checker's colour-histogram score against the style's references (tests/style_measures.py,
transcribed from checker/hist.py); content = the shape's mask IoU (the foreground against the shape's
template, or against the content image's foreground). The demo model is a toy trained on five shapes in
five textures, in eight palettes and in random colours, at 64 px (scripts/train_demo_model.py); the demo styles'
textures and palettes are not among them (scripts/make_demo_data.py). Every bound below names the value measured on
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

from ..style_measures import best_shape, foreground, hist_score, mask_iou, shape_iou, shape_ious
from ..tolerance import UINT8, assert_at_most
from .conftest import run_reference

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "demo" / "model"
STYLE = ROOT / "demo" / "data" / "00"  # lime/pink zigzags on purple: neither texture nor palette seen in training
SIZE = 64
STEPS = 20
SHAPES = ("circle", "square", "triangle", "star", "house")


def _refs(style: Path = STYLE) -> list[np.ndarray]:
    return [np.asarray(Image.open(p).convert("RGB")) for p in sorted((style / "images").glob("*.png"))]


@pytest.fixture(scope="module")
def pipe():
    return load_pipeline(MODEL)


@pytest.fixture(scope="module")
def content(pipe) -> dict[str, np.ndarray]:
    """The base model's "a square" and "a triangle" (seed 0 each): the content images of the injection methods."""
    return {s: pipe.text_to_image(f"a {s}", num_inference_steps=STEPS, guidance_scale=5.0, height=SIZE, width=SIZE,
                                  generator=np.random.default_rng(0))[0] for s in ("square", "triangle")}


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
    """The base model's "a {shape}", four seeds per shape: 20 images in shape order."""
    return np.concatenate([pipe.text_to_image([f"a {s}" for s in SHAPES], num_inference_steps=STEPS, guidance_scale=5.0,
                                              height=SIZE, width=SIZE,
                                              generator=[np.random.default_rng(5 * k + i) for i in range(5)])
                           for k in range(4)])


def test_every_prompted_shape_is_recognised(pipe):
    images = _shape_images(pipe)
    found = [best_shape(im) for im in images]
    hits = sum(f == s for f, s in zip(found, SHAPES * 4))
    print("FIGURES base best shapes", hits, found)
    # bound: 16 of the 20 images (5 shapes x 4 seeds) read as their prompted shape (measured: 18; the misses: one
    # house read as a circle, one star as a house)
    assert hits >= 16, found


def _styles() -> dict[str, list[np.ndarray]]:
    return {d.name: _refs(d) for d in sorted(STYLE.parent.iterdir()) if (d / "images").is_dir()}


def _styleid_config(**kw) -> StyleIDConfig:
    return StyleIDConfig(steps=STEPS, start_step=STEPS - 1, **kw)


def _styleid(pipe, content: np.ndarray, features, **kw) -> np.ndarray:
    return stylize(pipe, content[None], features, _styleid_config(**kw))[0]


def _style_features(pipe, ref: np.ndarray):
    return invert_style(pipe, ref, _styleid_config())


def test_styleid_moves_the_content_towards_the_style_and_keeps_its_shape(pipe, content):
    refs, c = _refs(), content["square"]
    out = _styleid(pipe, c, _style_features(pipe, refs[0]), gamma=0.75)  # the style's first reference (a circle)
    before, after = hist_score([c], refs), hist_score([out], refs)
    iou = mask_iou(foreground(out), foreground(c))
    print("FIGURES styleid", before, after, iou)
    # measured: content 0.031 -> StyleID 0.299 (gamma 0.75, T 1.5); bound: at least +0.15
    assert after >= before + 0.15, (before, after)
    # measured: IoU 0.93 of the output's mask with the content's; bound 0.7
    assert iou >= 0.7, iou


def test_styleid_score_rises_with_lower_gamma_and_higher_T(pipe, content):
    """Mean over the 3 demo styles x their 3 references x 2 contents (a square, a triangle): one pair moves by
    up to 0.1 either way on this toy, the mean does not."""
    scores: dict[str, list[float]] = {"gamma 0.9": [], "gamma 0.5": [], "T 1": [], "T 2": []}
    for refs in _styles().values():
        for ref in refs:
            features = _style_features(pipe, ref)
            for c in content.values():
                for name, kw in (("gamma 0.9", dict(gamma=0.9)), ("gamma 0.5", dict(gamma=0.5)),
                                 ("T 1", dict(gamma=0.75, T=1.0)), ("T 2", dict(gamma=0.75, T=2.0))):
                    scores[name].append(hist_score([_styleid(pipe, c, features, **kw)], refs))
    mean = {k: float(np.mean(v)) for k, v in scores.items()}
    print("FIGURES styleid gamma/T", mean)
    # measured: gamma 0.9 -> 0.5: 0.407 -> 0.432 (+0.025); bound: +0.01
    assert mean["gamma 0.5"] >= mean["gamma 0.9"] + 0.01, mean
    # measured: T 1 -> 2: 0.309 -> 0.440 (+0.131); bound: +0.05
    assert mean["T 2"] >= mean["T 1"] + 0.05, mean


def test_diffstyle_moves_the_content_shape_into_the_style_rendering_as_gamma_rises(pipe, content):
    """Every demo reference whose shape differs from the content's (mask IoU < 0.5: style 00's star, 01's star and
    triangle), DiffStyle at gamma 0, 0.5, 1 with h injected on every step >= t_edit."""
    c = content["square"]
    refs = [ref for r in _styles().values() for ref in r if mask_iou(foreground(ref), foreground(c)) < 0.5]
    ious = []
    for ref in refs:
        row = []
        for gamma in (0.0, 0.5, 1.0):
            # content_replace_step 0: all 12 steps >= t_edit inject (20 steps share only 999 with the 50-step default)
            out = diffstyle(pipe, c[None], ref, DiffStyleConfig(gamma=gamma, t_boost=0, steps=STEPS, inv_steps=STEPS,
                                                               content_replace_step=0))[0]
            row.append(mask_iou(foreground(out), foreground(c)))
        ious.append(row)
    mean = np.mean(ious, axis=0)
    print("FIGURES diffstyle", len(refs), np.round(ious, 3).tolist(), mean)
    assert len(refs) == 3, len(refs)  # the demo data's: style 00's star, 01's star and triangle
    # measured: mean IoU with the content's mask 0.298 / 0.518 / 0.579 at gamma 0 / 0.5 / 1 (each reference rises);
    # bound: rises at each step and by >= 0.15 from 0 to 1, and every reference ends above where it started
    assert mean[0] < mean[1] < mean[2] and mean[2] >= mean[0] + 0.15, mean
    assert all(r[2] > r[0] for r in ious), ious


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
    # measured: base 0.000 -> LoRA 0.306 (rank 8, lr 1e-3, 200 steps); bound: +0.15
    assert after >= before + 0.15, (before, after)


def test_dreambooth_lora_keeps_the_prompted_shape(lora_run):
    prompts, base, tuned = lora_run
    found = [best_shape(im) for im in tuned]
    print("FIGURES lora shapes", found, [shape_iou(im, p) for im, p in zip(tuned, prompts)])
    # bound: each prompted shape (Square, Triangle) is the best-fitting template of its LoRA image (measured: both,
    # IoU with their templates 0.79 and 0.82)
    assert found == [p.lower() for p in prompts], found


@pytest.fixture(scope="module")
def sdedit_runs(pipe, lora_run) -> dict[str, tuple[list[float], list[float]]]:
    """SDEdit from the mean reference at strength 0.3, 0.6, 0.9 (the LoRA in the pipe), per prompt of the style:
    histogram scores, and the prompted shape's IoU at strength 0 (the mean image), 0.3, 0.6, 0.9."""
    init = mean_image(sorted((STYLE / "images").glob("*.png")), SIZE)
    refs = _refs()
    runs = {}
    for obj in lora_run[0]:  # Square, Triangle
        scores, ious = [], []
        for strength in (0.3, 0.6, 0.9):
            out = img2img(pipe, init, [f"{obj} in style_00"], strength=strength, num_inference_steps=STEPS,
                          guidance_scale=5.0, generator=np.random.default_rng(0))
            scores.append(hist_score(out, refs))
            ious.append(shape_iou(out[0], obj))
        runs[obj] = scores, [shape_iou(init, obj)] + ious  # strength 0: the mean image itself
    print("FIGURES sdedit mean image", hist_score([init], refs), shape_ious(init), "runs", runs)
    return runs


def test_sdedit_from_the_mean_reference_carries_the_style(lora_run, sdedit_runs):
    _, base, _ = lora_run
    floor = hist_score(base, _refs())
    scores = [s for per_strength, _ in sdedit_runs.values() for s in per_strength]
    # measured: Square 0.610, 0.473, 0.380 and Triangle 0.548, 0.565, 0.530 at strength 0.3, 0.6, 0.9, against
    # the base model's 0.000 for the style's prompts; bound: every strength at least 0.1 above the base
    assert min(scores) >= floor + 0.1, (floor, scores)


def test_sdedit_from_the_mean_reference_draws_the_prompt_as_strength_rises(sdedit_runs):
    """The mean reference already scores 0.956 against its references (the references themselves 0.989): more
    strength can only trade its colours for the prompt's content, and that is what rises. Its blur of a circle, a
    house and a star fits a square template at 0.81 already, so the measure is the style's other prompt, Triangle."""
    _, ious = sdedit_runs["Triangle"]
    # measured: triangle IoU 0.561 (the mean image), 0.674, 0.712, 0.731 at strength 0, 0.3, 0.6, 0.9; bound: it
    # rises at every step, by >= 0.1 from 0 to 0.9
    assert all(a < b for a, b in zip(ious, ious[1:])) and ious[3] >= ious[0] + 0.1, ious
