"""scripts/package_submission.py: validation cases and the zip's exact contents."""

import json
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
import package_submission as pkg  # noqa: E402


def make(tmp_path: Path, prompts: dict[str, list[str]]) -> tuple[Path, Path]:
    data, results = tmp_path / "data", tmp_path / "results"
    for style, objs in prompts.items():
        (data / style / "images").mkdir(parents=True)
        (data / style / "prompt.json").write_text(json.dumps({str(i): o for i, o in enumerate(objs)}))
        (results / style).mkdir(parents=True)
        for o in objs:
            Image.fromarray(np.full((512, 512, 3), 7, np.uint8)).save(results / style / f"{o}.png")
    (results / "work").mkdir()
    (results / "manifest.json").write_text("{}")
    return data, results


def run(capsys, *args) -> tuple[int, list[str]]:
    code = pkg.main([str(a) for a in args])
    return code, [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]


def test_valid_tree_gives_a_zip_with_exactly_the_style_folders(tmp_path, capsys):
    data, results = make(tmp_path, {"00": ["Cat", "Red Fox"], "01": ["Owl"]})
    code, errors = run(capsys, results, "--data", data, "--zip", tmp_path / "sub.zip")
    assert code == 0 and errors == []
    with zipfile.ZipFile(tmp_path / "sub.zip") as z:
        assert sorted(z.namelist()) == ["00/Cat.png", "00/Red Fox.png", "01/Owl.png"]
    assert not list(tmp_path.glob(".sub.zip*"))


def test_every_problem_is_listed_and_nothing_is_written(tmp_path, capsys):
    data, results = make(tmp_path, {"00": ["Cat", "Dog", "Owl", "Bee", "Ant"], "01": ["Elk"]})
    (results / "00" / "Cat.png").unlink()
    Image.fromarray(np.zeros((256, 256, 3), np.uint8)).save(results / "00" / "Dog.png")
    Image.fromarray(np.zeros((512, 512, 4), np.uint8)).save(results / "00" / "Owl.png")
    Image.fromarray(np.zeros((512, 512), np.uint8)).save(results / "00" / "Bee.png")
    Image.fromarray(np.zeros((512, 512, 3), np.uint8)).save(results / "00" / "Ant.png", format="JPEG")
    (results / "00" / "notes.txt").write_text("x")
    (results / "01" / "Elk.png").rename(results / "01" / "elk.png")
    code, errors = run(capsys, results, "--data", data, "--zip", tmp_path / "sub.zip")
    assert code == 2 and not (tmp_path / "sub.zip").exists()
    text = "\n".join(errors)
    assert len(errors) == 8, text
    for words in ("Cat.png: missing", "Dog.png: is 256x256", "Owl.png: is mode RGBA", "Bee.png: is mode L",
                  "Ant.png: is JPEG", "notes.txt: not a prompt", "Elk.png: missing", "elk.png: not a prompt"):
        assert words in text, words


def test_allow_missing_packages_what_is_there_but_still_refuses_bad_files(tmp_path, capsys):
    data, results = make(tmp_path, {"00": ["Cat", "Dog"]})
    (results / "00" / "Cat.png").unlink()
    code, _ = run(capsys, results, "--data", data, "--zip", tmp_path / "a.zip")
    assert code == 2
    code, _ = run(capsys, results, "--data", data, "--zip", tmp_path / "a.zip", "--allow-missing")
    assert code == 0
    with zipfile.ZipFile(tmp_path / "a.zip") as z:
        assert z.namelist() == ["00/Dog.png"]
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(results / "00" / "Dog.png")
    code, errors = run(capsys, results, "--data", data, "--zip", tmp_path / "b.zip", "--allow-missing")
    assert code == 2 and "64x64" in errors[0] and not (tmp_path / "b.zip").exists()


@pytest.mark.parametrize("evil", ["../../x", "..", "a/b", "..\\x"])
def test_prompt_strings_never_leave_the_tree(tmp_path, capsys, evil):
    data, results = make(tmp_path, {"00": ["Cat"]})
    (data / "00" / "prompt.json").write_text(json.dumps({"0": "Cat", "1": evil}))
    code, errors = run(capsys, results, "--data", data, "--zip", tmp_path / "sub.zip")
    assert code == 2 and len(errors) == 1 and "prompt.json" in errors[0] and not (tmp_path / "sub.zip").exists()
