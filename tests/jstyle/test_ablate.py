"""scripts/ablate_lora_targets.py on the tiny model: one row per variant, each variant trains its own targets."""

import csv
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
import ablate_lora_targets as ablate  # noqa: E402


def test_two_variants_give_a_table(tmp_path):
    assert ablate.main(["--tiny", "--steps", "2", "--resolution", "16", "--variants", "unet,unet+text",
                        "--out", str(tmp_path)]) == 0
    rows = list(csv.DictReader((tmp_path / "ablation.csv").open()))
    assert [r["variant"] for r in rows] == ["unet", "unet+text"]
    assert float(rows[1]["lora_kb"]) > float(rows[0]["lora_kb"])  # the text encoder's LoRA is in the file
    assert all(float(r["final_loss"]) > 0 and float(r["peak_rss_mb"]) > 0 for r in rows)
    assert "| unet+text |" in (tmp_path / "ablation.md").read_text()
