"""The method registry: a new method is one file plus one entry, and plan, stages and run_all's flags follow."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import run_all  # noqa: E402
from jstyle.methods import registry  # noqa: E402

REFS = [p for p in (run_all.ROOT / "demo" / "data" / "00" / "images").iterdir() if not p.name.startswith(".")]
TINY = ["--demo", "--styles", "00", "--size", "16", "--steps", "1", "--no-check", "--no-package", "--no-progress"]
TOY = registry.Method("toy", "the content's negative", trains=False, prompt="a photo of {obj}", generates=True,
                      inject="tests.jstyle.toy_method:inject", settings="tests.jstyle.toy_method:ToyConfig")


def test_a_registered_toy_method_runs_through_plan_and_stages_on_the_tiny_model(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(registry.METHODS, "toy", TOY)
    with pytest.raises(SystemExit):
        run_all.parse_args(["--help"])
    assert "--toy-level LEVEL the toy's negative: level - content (default 255)" in " ".join(
        capsys.readouterr().out.split())
    flags = ["--method", "toy", "--toy-level", "200", "--devices", "cpu", "--out", str(tmp_path)]
    assert run_all.main([*TINY, *flags]) == 0
    tasks = json.loads((tmp_path / "manifest.json").read_text())["tasks"]
    prompts = json.loads((run_all.ROOT / "demo" / "data" / "00" / "prompt.json").read_text()).values()
    assert sorted(tasks) == sorted([f"00/generate/{p}" for p in prompts] + [f"00/inject/{p}" for p in prompts])
    for p in prompts:
        assert tasks[f"00/generate/{p}"]["info"] == {"prompt": f"a photo of {p}"}
        assert tasks[f"00/inject/{p}"]["info"] == {"level": 200, "references": len(REFS)}
        content = np.asarray(Image.open(tmp_path / "work" / "00" / "content" / f"{p}.png"))
        want = Image.fromarray(np.clip(200 - content.astype(np.int32), 0, 255).astype(np.uint8))
        want = np.asarray(want.resize((512, 512), Image.BICUBIC))  # outputs are 512x512 (stages' bicubic)
        assert np.array_equal(np.asarray(Image.open(tmp_path / "00" / f"{p}.png")), want)  # exact: no model maths
    hashed = json.loads((tmp_path / "manifest.json").read_text())["config"]
    assert hashed["toy_level"] == 200 and "styleid_gamma" not in hashed


def test_method_table_lists_every_method_with_its_flags():
    table = registry.method_table()
    for name in registry.METHODS:
        assert f"| `{name}` |" in table
    assert "`--styleid-T`" in table and "`--sdedit-strength`" in table and "`--diffstyle-gamma`" in table
