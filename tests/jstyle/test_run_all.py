"""run_all.py --demo: the whole path on the tiny model, outputs in the submission layout, rerun skips."""

import json
import sys
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import run_all  # noqa: E402


def test_demo_writes_submission_layout_and_resumes(tmp_path):
    args = ["--demo", "--out", str(tmp_path), "--styles", "00", "--steps", "1", "--size", "16", "--device", "cpu",
            "--no-check"]
    assert run_all.main(args) == 0
    prompts = json.loads((run_all.ROOT / "demo" / "data" / "00" / "prompt.json").read_text()).values()
    files = sorted(p.name for p in (tmp_path / "00").iterdir())
    assert files == sorted(f"{p}.png" for p in prompts)
    img = Image.open(tmp_path / "00" / files[0])
    assert img.size == (512, 512) and img.mode == "RGB"
    before = {f: (tmp_path / "00" / f).stat().st_mtime_ns for f in files}
    assert run_all.main(args) == 0
    assert json.loads((tmp_path / "run.json").read_text())["generated"] == 0
    assert before == {f: (tmp_path / "00" / f).stat().st_mtime_ns for f in files}


def test_bad_style_is_one_line_error(tmp_path, capsys):
    assert run_all.main(["--demo", "--out", str(tmp_path), "--styles", "99", "--device", "cpu", "--no-check"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "99" in err and "\n" not in err
