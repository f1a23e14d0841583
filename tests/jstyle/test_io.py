"""jstyle.io: one image reader (alpha on white, centre square crop then Lanczos) and one atomic writer.

The same RGBA reference is one array for training's dataset, StyleID's and DiffStyle's CLI, SDEdit's mean
image and the reference chooser. No model runs here: the CLI paths stop at the method call they feed.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from jstyle import io
from jstyle.errors import InputError
from jstyle.methods import diffstyle, styleid
from jstyle.methods.reference import choose_reference
from jstyle.methods.sdedit import mean_image
from jstyle.training import LoRATrainConfig
from jstyle.training.dataset import load_style_examples

from ..tolerance import UINT8, assert_close

H, W = 16, 24  # the centre square is columns 4..20


class _Seen(Exception):
    """Raised by a patched method once it has been handed its images."""


def _rgba_reference(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Write an RGBA PNG with a transparent (alpha 0, black underneath) block; return (what io.read_rgb must
    give: the block white, what the old alpha-dropping reader gave: the block black)."""
    rgb = np.random.default_rng(3).integers(0, 256, (H, W, 3), dtype=np.uint8)
    alpha = np.full((H, W, 1), 255, np.uint8)
    alpha[4:12, 6:14] = 0
    rgb[4:12, 6:14] = 0  # as most editors store a cleared area
    Image.fromarray(np.concatenate([rgb, alpha], -1), "RGBA").save(path)
    white = rgb.copy()
    white[4:12, 6:14] = 255
    return white, rgb


def test_rgba_reference_is_one_image_everywhere(tmp_path, monkeypatch):
    style = tmp_path / "style"
    (style / "images").mkdir(parents=True)
    ref = style / "images" / "ref.png"
    full, black = _rgba_reference(ref)
    square = full[:, 4:20]  # centre 16x16 crop; at --size 16 no resize follows
    content = tmp_path / "content.png"
    Image.fromarray(np.ascontiguousarray(square[::-1])).save(content)

    # training's dataset: the whole image, alpha on white
    examples = load_style_examples(LoRATrainConfig(style_dir=str(style), resolution=16, progress=False))
    assert len(examples) == 1 and np.array_equal(examples[0].image, full)

    # SDEdit's init from --style-dir: the mean of one image is that image
    assert np.array_equal(mean_image([ref], 16), square)

    # StyleID's and DiffStyle's CLI: what their style inversion / sampling is handed
    seen: dict[str, np.ndarray] = {}
    monkeypatch.setattr("jstyle.device.use_device", lambda device: "cpu")
    monkeypatch.setattr("jstyle.pipeline.load_pipeline", lambda *a, **k: SimpleNamespace(unet=None))
    monkeypatch.setattr(styleid, "resolve_layers", lambda unet, layers, variant="diffusers": [])

    def invert_style(pipe, style_image, cfg):
        seen["styleid"] = style_image
        return "features"

    def stylize(pipe, contents, features, cfg):
        seen["styleid content"] = contents[0]
        raise _Seen

    def run_diffstyle(pipe, contents, style_image, cfg):
        seen["diffstyle"], seen["diffstyle content"] = style_image, contents[0]
        raise _Seen

    monkeypatch.setattr(styleid, "invert_style", invert_style)
    monkeypatch.setattr(styleid, "stylize", stylize)
    monkeypatch.setattr(diffstyle, "diffstyle", run_diffstyle)
    argv = ["--model", str(tmp_path), "--content", str(content), "--style", str(ref), "--size", "16",
            "--device", "cpu", "--out", str(tmp_path / "out")]
    for method in (styleid, diffstyle):
        with pytest.raises(_Seen):
            method.run(method.build_parser().parse_args(argv))
    for name in ("styleid", "diffstyle"):
        assert np.array_equal(seen[name], square), name
        assert np.array_equal(seen[f"{name} content"], square[::-1]), name

    # the reference chooser: the RGBA file must read white where it is clear, so it is nearest to a white
    # content, not tied with a copy that has the block black (the old reader saw both as this copy)
    Image.fromarray(black).save(style / "images" / "a_black.png")
    refs = sorted((style / "images").glob("*.png"))
    assert choose_reference(full, refs, "nearest") == ref
    assert choose_reference(black, refs, "nearest") == style / "images" / "a_black.png"


def test_modes_become_rgb_with_alpha_on_white(tmp_path):
    # 16-bit grayscale: scaled to 8 bit (v / 65535 * 255, rounded), then grey RGB
    gray = np.random.default_rng(1).integers(0, 65536, (8, 8), dtype=np.uint16)
    Image.fromarray(gray.astype(np.int32), "I").convert("I;16").save(tmp_path / "g16.png")
    gray8 = np.clip(gray / 65535 * 255 + 0.5, 0, 255).astype(np.uint8)
    assert np.array_equal(io.read_rgb(tmp_path / "g16.png"), np.repeat(gray8[..., None], 3, -1))
    # palette with a transparent index: that index white, the others their palette colour
    idx = np.arange(64, dtype=np.uint8).reshape(8, 8) % 3
    pal = Image.fromarray(idx, "P")
    pal.putpalette([200, 10, 10, 10, 200, 10, 10, 10, 200] + [0] * (256 * 3 - 9))
    pal.save(tmp_path / "p.png", transparency=1)
    colours = np.array([[200, 10, 10], [255, 255, 255], [10, 10, 200]], np.uint8)
    assert np.array_equal(io.read_rgb(tmp_path / "p.png"), colours[idx])
    # grey + half alpha: out = a * v + (1 - a) * 255 with a = alpha / 255; PIL rounds to uint8
    la = np.stack([np.full((8, 8), 40, np.uint8), np.full((8, 8), 128, np.uint8)], -1)
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    a = 128 / 255
    assert_close(io.read_rgb(tmp_path / "la.png"), a * 40 + (1 - a) * 255, atol=UINT8, what="LA on white")


def test_size_is_centre_square_crop_then_lanczos(tmp_path):
    rng = np.random.default_rng(2)
    for shape, box in (((20, 40, 3), (10, 0, 30, 20)), ((40, 20, 3), (0, 10, 20, 30))):  # wide, tall
        arr = rng.integers(0, 256, shape, dtype=np.uint8)
        Image.fromarray(arr).save(tmp_path / "x.png")
        want = np.asarray(Image.fromarray(arr).crop(box).resize((16, 16), Image.LANCZOS))
        assert np.array_equal(io.read_rgb(tmp_path / "x.png", 16), want)
        left, top, right, bottom = box
        assert np.array_equal(io.read_rgb(tmp_path / "x.png", 20), arr[top:bottom, left:right])  # no resize
    assert io.read_rgb(tmp_path / "x.png").shape == (40, 20, 3)


def test_reader_errors_are_one_line(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"not an image")
    for path, size, match in ((tmp_path / "missing.png", None, "image not found"),
                              (tmp_path / "bad.png", None, "not a readable image"),
                              (tmp_path / "bad.png", 0, "must be positive")):
        with pytest.raises(InputError, match=match) as e:
            io.read_rgb(path, size)
        assert "\n" not in str(e.value)


def test_atomic_writes_leave_nothing_behind_on_error(tmp_path):
    final = tmp_path / "out" / "weights.safetensors"
    io.atomic_write(final, b"old")
    with pytest.raises(RuntimeError), io.atomic_path(final) as tmp:
        assert tmp.parent == final.parent and io.is_temp(tmp)
        tmp.write_bytes(b"half")
        raise RuntimeError("killed mid-write")
    assert final.read_bytes() == b"old" and sorted(final.parent.iterdir()) == [final]

    folder = tmp_path / "ckpt" / "step_000010"
    with io.atomic_path(folder, directory=True) as tmp:
        (tmp / "old.txt").write_text("1")
    with pytest.raises(RuntimeError), io.atomic_path(folder, directory=True) as tmp:
        (tmp / "state.json").write_text("{")
        raise RuntimeError("killed mid-checkpoint")
    assert sorted(p.name for p in folder.parent.iterdir()) == ["step_000010"]
    assert sorted(p.name for p in folder.iterdir()) == ["old.txt"]
    with io.atomic_path(folder, directory=True) as tmp:  # success replaces the whole folder
        (tmp / "new.txt").write_text("2")
    assert sorted(p.name for p in folder.iterdir()) == ["new.txt"]

    io.atomic_write(tmp_path / "t.json", "{\"é\": 1}\n")
    assert (tmp_path / "t.json").read_text(encoding="utf-8") == "{\"é\": 1}\n"
    img = np.random.default_rng(4).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    io.save_png(img, tmp_path / "p.png", {"prompt": "a lion"})
    with Image.open(tmp_path / "p.png") as im:
        assert im.text == {"prompt": "a lion"} and np.array_equal(np.asarray(im), img)
    assert not [p for p in tmp_path.rglob("*") if io.is_temp(p)]


def test_is_temp_matches_temp_path_names_only():
    for name in ("Cat.png", "pytorch_lora_weights.safetensors", "step_000010", "train_log.json", ".hidden"):
        tmp = io.temp_path(Path("/x") / name)
        assert io.is_temp(tmp) and tmp.parent == Path("/x"), tmp
        assert not io.is_temp(Path("/x") / name)
    for name in (".hidden.png", ".Cat.png.4242.tmp", ".manifest.json.k2j4_x9a.tmp", "Cow.png", "a.jstyle-tmp",
                 ".x.png.12-ABCDEF12.jstyle-tmp", ".x.png.12-abc.jstyle-tmp", "x.png.12-abcdef12.jstyle-tmp",
                 ".x.png.12-abcdef12.jstyle-tmp.png"):
        assert not io.is_temp(name), name
