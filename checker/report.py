"""Human-facing output: the terminal summary table and the self-contained HTML report."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

from PIL import Image

from checker.files import write_text_atomic
from checker.images import ImageDecodeError, decode_rgb

__all__ = ["summary_table", "write_html_report"]


def _fmt(v: Any, width: int = 8) -> str:
    if v is None:
        return "-".rjust(width)
    if isinstance(v, float):
        return f"{v:.4f}".rjust(width)
    return str(v).rjust(width)


def summary_table(result: dict[str, Any], max_problems: int = 15) -> str:
    """Plain-text summary: overall metrics, final score, one row per style, the first problems."""
    lines = []
    if result.get("WARNING"):
        lines += ["!" * 78, "!! " + result["WARNING"], "!" * 78]
    lines.append(f"jstyle checker {result['checker_version']}  mode={result['mode']}  fid={result['fid_mode']}")
    lines.append(f"{'metric':<10}{'value':>9}  better   original key")
    for k, v in result["metrics"].items():
        better = "higher" if result["higher_is_better"][k] else "lower"
        lines.append(f"{k:<10}{_fmt(v, 9)}  {better:<7}  {result['original_keys'][k]}")
    lines.append(f"{'final':<10}{_fmt(result['final_score'], 9)}")
    widths = {c: max(10, len(c) + 2) for c in result["metrics"]}  # 10 for the six; a longer name keeps a gap
    lines.append("")
    lines.append(f"{'style':<8}{'gen':>5}{'ref':>5}" + "".join(f"{c:>{w}}" for c, w in widths.items()))
    for name, st in result["styles"].items():
        row = "".join(_fmt(st.get(c), w) for c, w in widths.items())
        lines.append(f"{name:<8}{st['n_generated']:>5}{st['n_references']:>5}{row}")
    probs = [p for p in result["problems"] if p["kind"] != "size"]
    if probs:
        lines.append(f"\n{len(probs)} problem(s):")
        lines += [f"  [{p['kind']}] {p['path']}: {p['message']}" for p in probs[:max_problems]]
        if len(probs) > max_problems:
            lines.append(f"  ... {len(probs) - max_problems} more in result.json")
    n_size = sum(p["kind"] == "size" for p in result["problems"])
    if n_size:
        lines.append(f"{n_size} generated image(s) are not 512x512 (see result.json 'problems')")
    if result.get("WARNING"):
        lines.append("!! " + result["WARNING"])
    return "\n".join(lines)


def _thumb(path: str, size: int) -> str | None:
    try:
        rgb = decode_rgb(Path(path))
    except (ImageDecodeError, OSError):
        return None
    im = Image.fromarray(rgb)
    im.thumbnail((size, size))
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=82)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


_CSS = """
body{font-family:system-ui,sans-serif;margin:16px;background:#fafafa;color:#222}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#eee}.warn{background:#c00;color:#fff;padding:12px;font-size:20px;font-weight:bold}
.style{background:#fff;border:1px solid #ddd;margin:18px 0;padding:10px}
.grid{display:flex;flex-wrap:wrap;gap:8px}.card{width:168px;font-size:11px}
.card img{width:160px;height:160px;object-fit:contain;background:#ddd;border:4px solid #ddd}
.hit img{border-color:#2a2}.miss img{border-color:#d33}.missing{width:160px;height:160px;background:#fdd;
display:flex;align-items:center;justify-content:center;color:#a00;font-weight:bold}
.ref img{border-color:#36c}h3{margin:6px 0}.small{font-size:12px;color:#555}
.cands{display:flex;flex-wrap:wrap;gap:10px}.cand{border:3px solid #ccc;padding:6px;background:#fdfdfd}
.cand .card img{border-color:#ccc}.cand.winner{border-color:#2a2;background:#efe}
.badge{background:#2a2;color:#fff;font-weight:bold;padding:1px 6px;border-radius:3px;font-size:12px}
"""


def _card(title: str, uri: str | None, lines: list[str], cls: str) -> str:
    img = f'<img src="{uri}" alt="{html.escape(title)}">' if uri else '<div class="missing">unreadable</div>'
    return f'<div class="card {cls}">{img}<div><b>{html.escape(title)}</b><br>{"<br>".join(lines)}</div></div>'


def _candidates(entry: dict[str, Any], root: Path, thumb: int) -> str:
    """A style's --method auto candidates side by side: each one's screening images and scores, the winner marked."""
    by = entry["select_by"]
    parts = [f"<h3>Candidates (picked by {html.escape(by)} on {len(entry['prompts'])} screening prompt(s))</h3>"
             "<div class='cands'>"]
    for spec, cand in entry["candidates"].items():
        won = spec == entry["winner"]
        score = cand["score"]
        head = (f"<b>{html.escape(spec)}</b> {'<span class=badge>WINNER</span>' if won else ''}<br>"
                f"{html.escape(by)} {_fmt(score).strip()}"
                + "".join(f", {html.escape(k)} {_fmt(v).strip()}" for k, v in cand["metrics"].items() if k != by)
                + f"<br>{cand['seconds']} s to make")
        cards = "".join(_card(obj, _thumb(str(root / rel), thumb), [], "") for obj, rel in cand["images"].items())
        parts.append(f"<div class='cand{' winner' if won else ''}' data-candidate='{html.escape(spec)}'>"
                     f"<div class='small'>{head}</div><div class='grid'>{cards}</div></div>")
    parts.append("</div>")
    return "".join(parts)


def write_html_report(result: dict[str, Any], out: Path, thumb: int = 160, selection: Path | None = None) -> None:
    """One page: overall scores, then per style the references and the generated images with
    their per-image scores (green border = CLIP-R hit, red = miss); with a run_all --method auto
    `selection` (selection.json), each style's candidates side by side, the winner marked."""
    import json

    chosen = json.loads(selection.read_text(encoding="utf-8"))["styles"] if selection else {}
    parts = [f"<!doctype html><meta charset='utf-8'><title>jstyle checker report</title><style>{_CSS}</style>"]
    if result.get("WARNING"):
        parts.append(f"<div class='warn'>{html.escape(result['WARNING'])}</div>")
    parts.append(f"<h1>jstyle checker report</h1><p class='small'>mode {result['mode']}, FID {result['fid_mode']}, "
                 f"version {result['checker_version']}, device {result['environment']['device']}</p>")
    arrows = {k: "&uarr;" if up else "&darr;" for k, up in result["higher_is_better"].items()}
    head = "".join(f"<th>{k} ({arrows[k]})</th>" for k in result["metrics"])
    vals = "".join(f"<td>{_fmt(v).strip()}</td>" for v in result["metrics"].values())
    parts.append(f"<table><tr>{head}<th>final</th></tr><tr>{vals}<td><b>{_fmt(result['final_score']).strip()}</b></td></tr></table>")
    if result["problems"]:
        items = "".join(f"<li>[{html.escape(p['kind'])}] {html.escape(p['path'])}: {html.escape(p['message'])}</li>"
                        for p in result["problems"])
        parts.append(f"<details><summary>{len(result['problems'])} problem(s)</summary><ul>{items}</ul></details>")
    parts.append("<p class='small'>Borders: blue = reference, green = CLIP-R hit (own prompt in the top 5), "
                 "red = CLIP-R miss. Per image: dino, hist (higher better), lpips (lower better) against the "
                 "style's references; clip_iqa (higher better).</p>")
    for name, st in result["styles"].items():
        summ = ", ".join(f"{k} {_fmt(st.get(k)).strip()}" for k in result["metrics"] if k in st)
        parts.append(f"<div class='style'><h2>Style {html.escape(name)}</h2><p class='small'>{summ}</p>")
        mine = [p for p in result["problems"] if p["kind"] != "size" and name in Path(p["path"]).parts[-3:]]
        if mine:
            parts.append("<ul class='small'>" + "".join(
                f"<li>[{html.escape(p['kind'])}] {html.escape(Path(p['path']).name)}: {html.escape(p['message'])}</li>"
                for p in mine) + "</ul>")
        if name in chosen:
            parts.append(_candidates(chosen[name], selection.parent, thumb))
        parts.append(f"<h3>References ({st['n_references']})</h3><div class='grid'>")
        parts += [_card(Path(p).name, _thumb(p, thumb), [], "ref") for p in st["references"]]
        parts.append(f"</div><h3>Generated ({st['n_generated']})</h3><div class='grid'>")
        for p in st["generated"]:
            sc = st["images"].get(Path(p).name, {})
            lines = [f"{k} {sc[k]:.3f}" for k in result["metrics"] if k in sc]  # metrics with a per-image value
            cls = ""
            if "clip_r_rank" in sc:
                cls = "hit" if sc["clip_r_hit"] else "miss"
                lines.append(f"clip-r rank {sc['clip_r_rank'] + 1} ({'hit' if sc['clip_r_hit'] else 'miss'})")
            parts.append(_card(Path(p).name, _thumb(p, thumb), lines, cls))
        parts += [f"<div class='card miss'><div class='missing'>MISSING</div><b>{html.escape(w)}</b>"
                  "<br>clip-r miss</div>" for w in st["missing_prompts"]]
        parts.append("</div></div>")
    write_text_atomic(out, "\n".join(parts))
