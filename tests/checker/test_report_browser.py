"""report.html with run_all --method auto's selection, opened in a real headless browser (Debian's chromium):
every image loads and each style's winner is marked."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from checker.cli import main
from checker.synthetic import make_synthetic

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run")
# appended to a copy of the page: after load, each image says whether it decoded
PROBE = ("<script>window.addEventListener('load', () => { for (const im of document.images) "
         "im.setAttribute('data-loaded', im.complete && im.naturalWidth > 0 ? 'yes' : 'no'); "
         "document.body.setAttribute('data-probed', document.images.length); });</script>")


@pytest.fixture(scope="module")
def chromium() -> str:
    """Debian's chromium, installed here when missing (skipped, with the reason, where it cannot be)."""
    found = shutil.which("chromium")
    if found is None and shutil.which("apt-get") and os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", "chromium"], env=env,
                       capture_output=True, timeout=900)
        found = shutil.which("chromium")
    if found is None:
        reason = "chromium is not installed and cannot be here (apt-get install -y chromium needs root and Debian)"
        print(reason)
        pytest.skip(reason)
    return found


def _selection(root: Path, sub: Path, winners: dict[str, str]) -> Path:
    """A selection.json as run_all --method auto writes it: two candidates per style, their screening images."""
    styles = {}
    for style, winner in winners.items():
        cands = {}
        for i, spec in enumerate(("styleid", "diffstyle")):
            images = {}
            for png in sorted((sub / style).glob("*.png")):
                rel = f"work/screen/{spec}/{style}/{png.name}"
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(png, root / rel)
                images[png.stem] = rel
            score = 0.6 if spec == winner else 0.3 + 0.1 * i
            cands[spec] = {"metrics": {"hist": score}, "final": None, "score": score, "seconds": 1.0 + i,
                           "score_seconds": 0.1, "dir": f"work/screen/{spec}", "images": images}
        styles[style] = {"style": style, "select_by": "hist", "prompts": sorted(cands["styleid"]["images"]),
                         "winner": winner, "candidates": cands}
    path = root / "selection.json"
    path.write_text(json.dumps({"select_by": "hist", "screen_prompts": 5, "styles": styles}))
    return path


def test_report_shows_the_candidates_and_marks_the_winners(tmp_path: Path, chromium: str) -> None:
    data, sub = make_synthetic(tmp_path, 2, 2, 2, size=48)
    winners = {"00": "diffstyle", "01": "styleid"}
    selection = _selection(sub, sub, winners)
    report = tmp_path / "report.html"
    assert main(["--submission", str(sub), "--data", str(data), "--out", str(tmp_path / "r.json"), "--metrics", "hist",
                 "--random-weights", "--quiet", "--report", str(report), "--selection", str(selection)]) == 0
    probed = tmp_path / "probed.html"
    probed.write_text(report.read_text() + PROBE)
    run = subprocess.run([chromium, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000",
                          "--dump-dom", probed.as_uri()], capture_output=True, text=True, timeout=300)
    dom = run.stdout
    assert "data-probed" in dom, run.stderr[-2000:]
    n_images = int(re.search(r'data-probed="(\d+)"', dom)[1])
    # per style: 2 references + 2 generated + 2 candidates x 2 screening images
    assert n_images == 2 * (2 + 2 + 4) and dom.count('data-loaded="yes"') == n_images
    assert 'data-loaded="no"' not in dom
    marked = re.findall(r'<div class="cand winner" data-candidate="([^"]+)">', dom)
    assert marked == [winners["00"], winners["01"]] and dom.count(">WINNER</span>") == 2
    assert len(re.findall(r'<div class="cand" data-candidate=', dom)) == 2  # the losers, unmarked
