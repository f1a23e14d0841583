"""Robustness: odd image modes, stray files, missing / empty / unreadable inputs never crash and
are named in the result."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from checker.clip_r import ClipR
from checker.config import CheckerConfig
from checker.data import SHIPPED_PROMPTS, candidate_prompts, discover_styles, list_images, load_style, read_prompts
from checker.errors import CheckerError
from checker.images import ImageDecodeError, decode_rgb
from checker.run import evaluate
from tests.tolerance import UINT8, assert_close


def _write_modes(folder: Path, rng: np.random.Generator) -> dict[str, float]:
    """Files in odd modes -> max allowed |ours - cv2.imread| in grey levels.

    Integer code on both sides, so the bound is exact, not statistical. PNG is lossless and 16-bit keeps
    the high byte (v >> 8) on both sides; the JPEG is decoded by libjpeg-turbo's accurate integer IDCT in
    both, which gives identical bits on every SIMD path: 0 levels. CMYK: PIL rounds (255-C)(255-K)/255,
    OpenCV floors k' - (C k' >> 8); the two differ by C k' (1/255 - 1/256) < 1 plus round-vs-floor < 1.5,
    so <= 2 levels. Measured 0 and 1 (CMYK) here (AMD EPYC, 2 cores); other machine: not measured. A bug
    (alpha blended instead of dropped, CMYK not inverted, channels swapped, 16-bit clipped) is >= 50 levels.
    """
    a8 = rng.integers(0, 256, (24, 30, 4), dtype=np.uint8)
    a16 = rng.integers(0, 65536, (24, 30, 3), dtype=np.uint16)
    Image.fromarray(a8, "RGBA").save(folder / "rgba.png")
    Image.fromarray(a8[..., :2], "LA").save(folder / "la.png")
    Image.fromarray(a8[..., 0]).save(folder / "gray.png")
    Image.fromarray(a8[..., :3]).convert("P").save(folder / "palette.png")
    Image.fromarray(a8[..., :3]).convert("CMYK").save(folder / "cmyk.jpg")
    cv2.imwrite(str(folder / "gray16.png"), a16[..., 0])
    cv2.imwrite(str(folder / "color16.png"), a16)
    Image.fromarray(a8[..., :3]).save(folder / "rgb.jpg", quality=85)
    return {"rgba.png": 0, "la.png": 0, "gray.png": 0, "palette.png": 0, "cmyk.jpg": 2 * UINT8,
            "gray16.png": 0, "color16.png": 0, "rgb.jpg": 0}


def test_decode_matches_cv2_for_odd_modes(tmp_path: Path, rng: np.random.Generator) -> None:
    for name, tol in _write_modes(tmp_path, rng).items():
        ours = decode_rgb(tmp_path / name)
        ref = cv2.imread(str(tmp_path / name))[..., ::-1]
        assert ours.dtype == np.uint8 and ours.shape == ref.shape, name
        assert_close(ours, ref, atol=tol, what=f"decode {name} vs cv2.imread")


def test_unreadable_image_raises_decode_error(tmp_path: Path) -> None:
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    with pytest.raises(ImageDecodeError):
        decode_rgb(bad)


def test_stray_files_are_ignored(tmp_path: Path) -> None:
    for name in (".DS_Store", "notes.txt", "._Dolphin.png", "Thumbs.db"):
        (tmp_path / name).write_bytes(b"junk")
    (tmp_path / "sub").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "Dolphin.png")
    images, ignored = list_images(tmp_path)
    assert [p.name for p in images] == ["Dolphin.png"]
    assert len(ignored) == 5


def test_prompt_file_errors(tmp_path: Path) -> None:
    (tmp_path / "prompt.json").write_text('{"0": "Dolphin", "1": "Bread", "10": "Lion", "2": "Cat"}')
    assert read_prompts(tmp_path / "prompt.json") == ["Dolphin", "Bread", "Cat", "Lion"]
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(CheckerError, match="bad.json"):
        read_prompts(tmp_path / "bad.json")


@pytest.fixture()
def messy(tmp_path: Path, rng: np.random.Generator) -> tuple[Path, Path]:
    data, sub = tmp_path / "data", tmp_path / "sub"
    words = {"00": ["Dolphin", "Bread", "Lion"], "01": ["Cat", "Dog"], "02": ["Owl"]}
    for style, ws in words.items():
        (data / style / "images").mkdir(parents=True)
        (data / style / "prompt.json").write_text(json.dumps({str(i): w for i, w in enumerate(ws)}))
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(data / style / "images" / "a.png")
        Image.fromarray(rng.integers(0, 256, (40, 40), dtype=np.uint8)).save(data / style / "images" / "b.png")
        (data / style / "images" / ".DS_Store").write_bytes(b"x")
    (sub / "00").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 256, (48, 48, 4), dtype=np.uint8), "RGBA").save(sub / "00" / "Dolphin.png")
    cv2.imwrite(str(sub / "00" / "bread.PNG"), rng.integers(0, 65536, (32, 32, 3), dtype=np.uint16))
    (sub / "00" / "Lion.png").write_bytes(b"garbage")
    (sub / "00" / ".DS_Store").write_bytes(b"x")
    (sub / "00" / "readme.txt").write_text("hi")
    (sub / "01").mkdir()  # empty style folder; style 02 missing entirely
    (sub / "99").mkdir()  # not a dataset style, with an image
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(sub / "99" / "Dolphin.png")
    (sub / "logs").mkdir()  # no images (as run_all's logs/ and work/): not a style, not a problem
    (sub / "logs" / "00.log").write_text("log")
    return data, sub


def test_messy_submission_is_reported_not_crashed(messy: tuple[Path, Path], backbones) -> None:
    data, sub = messy
    cfg = CheckerConfig(submission=sub, data=data, metrics=("hist", "clip_r"))
    res = evaluate(cfg, backbones)
    kinds = {(p["kind"], Path(p["path"]).name) for p in res["problems"]}
    assert ("unreadable", "Lion.png") in kinds
    assert ("missing_prompt", "Lion.png") in kinds
    assert ("empty_style", "01") in kinds
    assert ("missing_style", "02") in kinds
    assert ("unexpected_style", "99") in kinds and not any(n == "logs" for _, n in kinds)
    assert not any(k == "unreadable" and n in (".DS_Store", "readme.txt") for k, n in kinds)
    assert any(f.endswith("readme.txt") for f in res["ignored_files"])
    s00, s01, s02 = (res["styles"][s] for s in ("00", "01", "02"))
    assert s00["n_generated"] == 2 and s00["missing_prompts"] == ["Lion"]
    assert s00["clip_r_total"] == 3 and s01["clip_r_total"] == 2 and s02["clip_r_total"] == 1
    assert s01["hist"] is None and s01["clip_r"] == 0.0
    assert set(s00["images"]) == {"Dolphin.png", "bread.PNG"}
    # Bit-exact: clip_r is sum(hits) / sum(totals) = the same two integers divided once; hist is the mean of
    # one defined value (0 + x) / 1. A style counted that should be skipped would move either by >= 1/6.
    assert_close(res["metrics"]["clip_r"], s00["clip_r_hits"] / 6, atol=0, what="clip_r micro average")
    assert_close(res["metrics"]["hist"], s00["hist"], atol=0, what="hist skips styles without images")
    assert res["final_score"] is None  # only two metrics were asked for


def test_style_discovery_and_prompts(messy: tuple[Path, Path]) -> None:
    data, sub = messy
    assert discover_styles(data) == ["00", "01", "02"]
    assert discover_styles(data, ("02", "00")) == ["00", "02"]
    with pytest.raises(CheckerError, match="--styles 07"):
        discover_styles(data, ("07",))
    assert candidate_prompts(data, "union") == ["bread", "cat", "dog", "dolphin", "lion", "owl"]
    (data / "words.txt").write_text("Apple\nbanana\n\nAPPLE\n")
    assert candidate_prompts(data, data / "words.txt") == ["apple", "banana"]
    with pytest.raises(CheckerError, match="--clip-r-prompts .*nope.txt: file not found"):
        candidate_prompts(data, data / "nope.txt")
    (data / "empty.txt").write_text("\n \n")
    with pytest.raises(CheckerError, match="no words"):
        candidate_prompts(data, data / "empty.txt")


def test_default_candidates_are_the_shipped_list(messy: tuple[Path, Path]) -> None:
    """score_api.py get_clip_r_score: clip_r_prompts.txt, 216 lines, strip().lower(), 215 unique words."""
    data, _ = messy
    assert len(SHIPPED_PROMPTS.read_text(encoding="utf-8").splitlines()) == 216
    words = candidate_prompts(data)
    assert words == candidate_prompts(data, "shipped") and len(words) == 215
    assert {"gym", "dolphin", "lion"} <= set(words) and words == sorted(w.lower() for w in words)
    assert CheckerConfig(submission=data, data=data).clip_r_prompts == "shipped"


def test_own_word_outside_the_list_is_ranked() -> None:
    """input_prompts = list(set(prompts + [image_prompt])): an own word not in the list is added."""
    words = candidate_prompts(Path("/nonexistent"))
    clip_r = ClipR.__new__(ClipR)
    clip_r.words = sorted(set(words) | {"zyzzyva"})
    index = {w: i for i, w in enumerate(clip_r.words)}
    logits = torch.zeros(2, len(clip_r.words))  # small integers: comparisons are exact
    logits[0, index["zyzzyva"]] = 3.0  # best of 216 candidates
    logits[1, index["zyzzyva"]] = 1.0
    logits[1, [index[w] for w in words[:7]]] = 2.0  # 7 list words above it
    assert "zyzzyva" not in words
    assert clip_r.ranks_from_logits(logits, ["zyzzyva", "zyzzyva"], words) == [0, 7]
    # an own word in the list is not counted twice
    logits2 = torch.zeros(1, len(clip_r.words))
    assert clip_r.ranks_from_logits(logits2, ["gym"], words) == [0]


def test_odd_sizes_are_scored_and_named(messy: tuple[Path, Path]) -> None:
    data, sub = messy
    sd = load_style(data, sub, "00")
    sizes = [p for p in sd.problems if p.kind == "size"]
    assert {Path(p.path).name for p in sizes} == {"Dolphin.png", "bread.PNG"}
