"""Validate a result tree against the dataset and write the submission zip (style folders at its root).

    python scripts/package_submission.py RESULTS --data DATA [--zip RESULTS/submission.zip] [--allow-missing]

Every style x prompt of DATA/<style>/prompt.json must be RESULTS/<style>/<Prompt>.png, a 512x512 RGB
PNG, with nothing else in the style folders. Problems are listed one per line and nothing is written
(exit 2); --allow-missing packages what is there when the only problems are missing images.
Needs only PIL: runs in either environment.
"""

from __future__ import annotations

import argparse
import sys
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from jstyle.data import list_styles, read_prompts  # noqa: E402
from jstyle.errors import JStyleError  # noqa: E402
from jstyle.io import atomic_path  # noqa: E402

SIZE = (512, 512)


def check_image(path: Path) -> str | None:
    """None if `path` is a 512x512 RGB PNG, else what is wrong with it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            fmt, mode, size = im.format, im.mode, im.size
            im.verify()
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        return f"not a readable image ({e.__class__.__name__})"
    if fmt != "PNG":
        return f"is {fmt}, not PNG"
    if mode != "RGB":
        return f"is mode {mode}, not RGB"
    if size != SIZE:
        return f"is {size[0]}x{size[1]}, not 512x512"
    return None


def inside(root: Path, path: Path) -> bool:
    return path.resolve().is_relative_to(root.resolve())


def validate(results: Path, data: Path, styles: list[str] | None = None) -> tuple[list[str], list[str], list[tuple]]:
    """(missing, other problems, [(file, name in zip)]) for the styles of `data` (or the listed ones)."""
    missing: list[str] = []
    problems: list[str] = []
    members: list[tuple[Path, str]] = []
    if not results.is_dir():
        return [], [f"{results}: results folder not found"], []
    for style in list_styles(data, styles):
        expected = {f"{p}.png" for p in read_prompts(data / style)}
        folder = results / style
        for name in sorted(expected):
            path = folder / name
            if not inside(results, path) or Path(name).name != name:
                problems.append(f"{data / style / 'prompt.json'}: prompt {name[:-4]!r} would leave the results tree")
            elif not path.is_file():
                missing.append(f"{path}: missing")
            elif (why := check_image(path)) is not None:
                problems.append(f"{path}: {why}")
            else:
                members.append((path, f"{style}/{name}"))
        if folder.is_dir():
            for extra in sorted(p.name for p in folder.iterdir() if p.name not in expected):
                problems.append(f"{folder / extra}: not a prompt of {style}/prompt.json (remove it or fix its name)")
    return missing, problems, members


def write_zip(members: list[tuple[Path, str]], target: Path) -> None:
    with atomic_path(target) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
        for path, name in members:
            z.write(path, name)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", type=Path, help="<results>/<style>/<Prompt>.png")
    p.add_argument("--data", type=Path, required=True, help="the dataset: <style>/prompt.json")
    p.add_argument("--styles", default="", help="comma list (default: every style of --data)")
    p.add_argument("--zip", type=Path, help="zip to write (default <results>/submission.zip)")
    p.add_argument("--allow-missing", action="store_true", help="package even if some images are missing")
    try:
        args = p.parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    try:
        missing, problems, members = validate(args.results, args.data, [s for s in args.styles.split(",") if s])
    except JStyleError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    refuse = problems + ([] if args.allow_missing else missing)
    for line in refuse:
        print(f"error: {line}", file=sys.stderr)
    if refuse:
        print(f"not packaged: {len(refuse)} problem(s) above", file=sys.stderr)
        return 2
    for line in missing:
        print(f"warning: {line} (--allow-missing)", file=sys.stderr)
    target = args.zip or args.results / "submission.zip"
    write_zip(members, target)
    print(f"wrote {target}: {len(members)} images" + (f", {len(missing)} missing" if missing else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
