"""Textual inversion: diffusers' learned_embeds.safetensors both ways, and training only the token's rows.

The torch side is tests/reference/textual_inversion_ref.py (checker env): it writes a 2-vector file the way
diffusers' training example does and loads it with `pipe.load_textual_inversion`, and loads a jstyle-trained
file the same way. Token ids must be equal (the tokenizer taught the new tokens as transformers' add_tokens),
the embedding rows bit-equal (a file copy), and the text-encoder states within TEXT_ATOL.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jstyle.errors import ConfigError, InputError
from jstyle.pipeline import load_pipeline
from jstyle.textual_inversion import WEIGHT_NAME, read_learned_embeds, token_embeddings
from jstyle.train_textual_inversion import main
from jstyle.training.optim import lr_at
from jstyle.training.textual_inversion import TextualInversionConfig, TextualInversionTrainer, train_textual_inversion

from ..tolerance import TEXT_ATOL, assert_close
from .conftest import cache_dir, run_reference

REF = Path(__file__).resolve().parents[1] / "reference" / "textual_inversion_ref.py"
PROMPTS = ["a Circle in the style of {t}.", "{t}", "an image of a star, {t} and <unknown>"]  # as REF's
RES = 16


def jstyle_outputs(pipe, token: str) -> tuple[np.ndarray, np.ndarray]:
    ids = np.asarray(pipe.tokenizer([p.format(t=token) for p in PROMPTS])["input_ids"])
    return ids, pipe.encode_prompt([p.format(t=token) for p in PROMPTS]).numpy()


@pytest.fixture(scope="module")
def diffusers_made(tiny_ref, tmp_path_factory) -> Path:
    out = cache_dir(tmp_path_factory, f"ti-{hashlib.sha256(REF.read_bytes()).hexdigest()[:12]}")
    if not (out / "outputs.npz").exists():
        run_reference(REF, "make", str(tiny_ref / "sd1"), str(out))
    return out


@pytest.fixture(scope="module")
def style_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("data") / "07"
    (d / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("Circle", "Star"):
        img = rng.integers(0, 255, (RES, RES, 3), dtype=np.uint8)
        img[:, : RES // 2] = img[:, : RES // 2] // 4
        Image.fromarray(img).save(d / "images" / f"{name}.png")
    return d


def test_diffusers_file_loads_in_jstyle(tiny_ref, diffusers_made):
    pipe = load_pipeline(tiny_ref / "sd1")
    n_vocab = len(pipe.tokenizer)
    ids = pipe.load_textual_inversion(diffusers_made)  # the folder: learned_embeds.safetensors in it
    assert list(ids) == ["<cat-toy>"] and ids["<cat-toy>"] == [n_vocab, n_vocab + 1]  # 2 vectors
    with np.load(diffusers_made / "outputs.npz") as f:
        want = dict(f)
    got_ids, states = jstyle_outputs(pipe, "<cat-toy>")
    assert np.array_equal(got_ids, want["input_ids"])  # "<cat-toy>" -> both vectors' ids, as maybe_convert_prompt
    assert (got_ids == n_vocab + 1).sum() == 3  # the second vector, once in each prompt
    assert np.array_equal(token_embeddings(pipe.tokenizer, pipe.text_encoder, "<cat-toy>"), want["rows"])
    assert_close(states, want["states"], atol=TEXT_ATOL, what="text states with a diffusers embedding")
    plain = load_pipeline(tiny_ref / "sd1").encode_prompt([p.format(t="<cat-toy>") for p in PROMPTS]).numpy()
    assert np.abs(plain - states).max() > 0.1  # the embedding changes the states (the test can fail)


def test_trained_file_loads_in_diffusers_and_only_the_token_learns(tiny_ref, style_dir, tmp_path):
    pipe = load_pipeline(tiny_ref / "sd1")
    base = {c: {k: v.numpy().copy() for k, v in getattr(pipe, c).state_dict().items()}
            for c in ("unet", "text_encoder", "vae")}
    init = base["text_encoder"]["embeddings.token_embedding.weight"][pipe.tokenizer.encode("artistic", False)[0]]
    cfg = TextualInversionConfig(style_dir=str(style_dir), resolution=RES, output_dir=str(tmp_path), progress=False,
                                 placeholder_token="<s07>", instance_template="a {obj} in the style of <s07>.",
                                 max_train_steps=3, learning_rate=1e-2)
    tr = TextualInversionTrainer(pipe, cfg)
    assert [e.prompt for e in tr.examples] == ["a Circle in the style of <s07>.", "a Star in the style of <s07>."]
    batch = tr.batch(0, np.random.default_rng(1))
    before = tr.compute_loss(batch, np.random.default_rng(2)).item()
    path = tr.train()
    after = tr.compute_loss(batch, np.random.default_rng(2)).item()
    assert path == tmp_path / WEIGHT_NAME and before != after
    learned = read_learned_embeds(path)["<s07>"]
    assert learned.shape == (1, 32)
    # 3 AdamW steps at lr 1e-2 move each element by up to ~3e-2 (Adam's steps are ~lr): the row left its init
    assert 1e-2 < np.abs(learned[0] - init).max() <= 3.1e-2
    for comp, state in base.items():  # every other weight, and every other embedding row, bitwise unchanged
        now = getattr(pipe, comp).state_dict()
        for k, v in state.items():
            assert np.array_equal(now[k].numpy()[: len(v)], v), (comp, k)
    assert np.array_equal(token_embeddings(pipe.tokenizer, pipe.text_encoder, "<s07>"), learned)

    out = tmp_path / "diffusers.npz"
    run_reference(REF, "check", str(tiny_ref / "sd1"), str(path), str(out))
    with np.load(out) as f:
        want = dict(f)
    got_ids, states = jstyle_outputs(pipe, "<s07>")
    assert np.array_equal(got_ids, want["input_ids"]) and np.array_equal(want["rows"], learned)
    assert_close(states, want["states"], atol=TEXT_ATOL, what="text states with a jstyle embedding in diffusers")


def test_resume_equals_uninterrupted(tiny_ref, style_dir, tmp_path):
    kw = dict(style_dir=str(style_dir), resolution=RES, progress=False, max_train_steps=3, checkpointing_steps=2,
              learning_rate=1e-2, lr_scheduler="step", lr_step_size=2, lr_step_gamma=0.5)
    full = train_textual_inversion(TextualInversionConfig(output_dir=str(tmp_path / "a"), **kw),
                                   load_pipeline(tiny_ref / "sd1"))
    train_textual_inversion(TextualInversionConfig(output_dir=str(tmp_path / "b"), **kw),
                            load_pipeline(tiny_ref / "sd1"), stop_after=2)
    resumed = train_textual_inversion(TextualInversionConfig(output_dir=str(tmp_path / "b"), resume="latest", **kw),
                                      load_pipeline(tiny_ref / "sd1"))
    a, b = read_learned_embeds(full)["<F>"], read_learned_embeds(resumed)["<F>"]
    # the same seeded steps; as test_train_lora's resume bound: rounding-level gradient changes move Adam's
    # update by up to lr * 1e-3 per step, a lost moment or step by ~lr (1e-2)
    assert_close(b, a, atol=3 * 1e-2 * 1e-3, what="resumed vs uninterrupted embedding")


def test_step_schedule_and_bad_settings(tiny_ref, style_dir, tmp_path):
    # torch's StepLR(step_size=30, gamma=0.7), stepped after every optimizer step (StyleBlend's TI schedule)
    assert [lr_at(s, 1e-2, "step", 0, 500, 30, 0.7) for s in (0, 29, 30, 61)] == [
        1e-2, 1e-2, 1e-2 * 0.7, 1e-2 * 0.7**2]
    with pytest.raises(ConfigError, match="does not hold the placeholder"):
        TextualInversionConfig(style_dir=str(style_dir), placeholder_token="<x>")
    pipe = load_pipeline(tiny_ref / "sd1")
    with pytest.raises(ConfigError, match="initializer_token"):
        TextualInversionTrainer(pipe, TextualInversionConfig(style_dir=str(style_dir), initializer_token=" ",
                                                             resolution=RES, output_dir=str(tmp_path)))
    with pytest.raises(ConfigError, match="vocabulary"):
        pipe.load_textual_inversion(_file(tmp_path, "cat</w>", 32))
    with pytest.raises(ConfigError, match="shape"):
        pipe.load_textual_inversion(_file(tmp_path, "<x>", 48))
    with pytest.raises(InputError, match="not found"):
        pipe.load_textual_inversion(tmp_path / "nothing")
    common = ["--model", str(tiny_ref / "sd1"), "--resolution", str(RES), "--no-progress"]
    assert main([*common, "--style-dir", str(style_dir), "--max-train-steps", "1", "--placeholder-token", "<c>",
                 "--instance-template", "{obj}, <c>", "--output-dir", str(tmp_path / "cli")]) == 0
    assert list(read_learned_embeds(tmp_path / "cli")) == ["<c>"]
    assert main([*common, "--style-dir", str(tmp_path / "none"), "--output-dir", str(tmp_path / "cli2")]) == 2


def _file(folder: Path, token: str, dim: int) -> Path:
    from jstyle.textual_inversion import save_learned_embeds

    return save_learned_embeds(folder / f"{dim}.safetensors", token, np.ones((1, dim), np.float32))

