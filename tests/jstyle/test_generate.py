"""`python -m jstyle.generate` on a tiny random model: files, rerun skip, one-line errors (exit status 2)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from jstyle import write_tiny_pipeline
from jstyle.generate import main, output_name, slugify

# 16x16 images from the tiny sd2 model, one prompt per call (UNet batch 2 with CFG): the kernel shapes
# test_pipeline.py and test_schedulers.py already compile.
SMALL = ["--steps", "2", "--height", "16", "--width", "16", "--device", "cpu", "--scheduler", "euler_a"]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return write_tiny_pipeline(tmp_path_factory.mktemp("gen") / "tiny-sd2", kind="sd2", seed=1)


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_file_names():
    assert slugify("  A Dolphin, in style_03!! ") == "a-dolphin-in-style-03"
    assert slugify("東京 😀") == "prompt"
    assert len(slugify("word " * 50)) <= 60
    name = output_name("A dolphin", 7)
    assert name.startswith("a-dolphin-") and name.endswith("-s7.png")
    assert output_name("a dolphin!", 7) != output_name("a dolphin?", 7)  # same slug, different files


def test_generate_writes_pngs_and_skips_existing(tiny_model, tmp_path, capsys):
    out = tmp_path / "out"
    prompts = ["a dolphin", "a lion in the style of monet"]
    argv = ["--model", str(tiny_model), "--prompt", prompts[0], "--prompt", prompts[1], *SMALL, "--out", str(out)]
    assert main(argv) == 0
    files = sorted(p.name for p in out.iterdir())
    assert files == sorted(output_name(p, 0) for p in prompts)  # no temporary files left behind
    first = {}
    for name in files:
        with Image.open(out / name) as im:
            assert im.size == (16, 16) and im.mode == "RGB"
            assert im.info["prompt"] in prompts and im.info["seed"] == "0" and im.info["scheduler"] == "euler_a"
            first[name] = np.asarray(im)
    assert not np.array_equal(*first.values())  # different prompts, different images
    mtimes = {n: (out / n).stat().st_mtime_ns for n in files}
    capsys.readouterr()

    # rerun: nothing to do, nothing rewritten
    assert main(argv) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert {n: (out / n).stat().st_mtime_ns for n in files} == mtimes

    # a second seed per prompt: only those are generated (one image per call, as before)
    assert main([*argv, "--batch", "2"]) == 0
    assert "wrote 2 images" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == sorted(output_name(p, s) for p in prompts for s in (0, 1))
    assert {n: (out / n).stat().st_mtime_ns for n in files} == mtimes
    with Image.open(out / output_name(prompts[0], 1)) as im:
        assert not np.array_equal(np.asarray(im), first[output_name(prompts[0], 0)])  # seed 1 differs

    # a lost file comes back, the same
    lost = output_name(prompts[1], 0)
    (out / lost).unlink()
    assert main(argv) == 0
    assert "wrote 1 image to" in capsys.readouterr().out
    with Image.open(out / lost) as im:
        assert np.array_equal(np.asarray(im), first[lost])


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--prompt", "x", "--height", "20"], "multiples of 8"),
        ([], "no prompts"),
        (["--prompt", "x", "--steps", "0"], "--steps"),
        (["--prompt", "x", "--scheduler", "pndm"], "unknown scheduler 'pndm'; use one of ddim, ddpm, dpm++2m, euler_a"),
        (["--prompt", "x", "--guidance", "-1"], "--guidance"),
        (["--prompt", "x", "--steps", "many"], "invalid int value"),
        (["--prompt", "x", "--eta", "0.5", "--scheduler", "dpm++2m"], "--eta"),
        (["--prompt", "x", "--lora", "missing.safetensors"], "--lora missing.safetensors: file not found"),
    ],
)
def test_bad_input_is_one_line_exit_2(extra, message, tmp_path, capsys):
    assert main(["--model", str(tmp_path), "--out", str(tmp_path / "out"), *extra]) == 2
    assert message in one_error_line(capsys)
    assert not (tmp_path / "out").exists()


def test_help(capsys):
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    assert all(s in text for s in ("--scheduler", "dpm++2m", "euler_a", "--batch", "restarted", "example"))


def test_missing_model_is_one_line(tmp_path, capsys):
    assert main(["--model", str(tmp_path / "nowhere"), "--prompt", "x", *SMALL, "--out", str(tmp_path)]) == 2
    assert "not found" in one_error_line(capsys)


def test_lora_flag_changes_the_image_and_scale_zero_does_not(tiny_model, tmp_path):
    import jittor as jt

    from jstyle import load_pipeline
    from jstyle import lora as L

    pipe = load_pipeline(tiny_model)
    L.inject_lora(pipe.unet, ["to_q", "to_k", "to_v", "to_out.0"], rank=4, alpha=4.0, rng=np.random.default_rng(0))
    rng = np.random.default_rng(1)
    for layer in L.lora_layers(pipe.unet).values():
        w = layer.lora_B.weight
        w.assign(jt.array((0.5 * rng.standard_normal(w.shape)).astype(np.float32)))
    lora = L.save_lora(tmp_path / "style", {"unet": pipe.unet})

    def image(*extra: str) -> np.ndarray:
        out = tmp_path / f"out{len(list(tmp_path.iterdir()))}"
        assert main(["--model", str(tiny_model), "--prompt", "a dolphin", *SMALL, "--out", str(out), *extra]) == 0
        (png,) = out.iterdir()
        with Image.open(png) as im:
            return np.asarray(im).astype(int)

    plain = image()
    assert np.abs(image("--lora", str(lora)) - plain).max() > 10
    np.testing.assert_array_equal(image("--lora", str(lora), "--lora-scale", "0"), plain)
