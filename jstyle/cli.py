"""The shared shape of jstyle's command-line entry points."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from .errors import JStyleError

__all__ = ["run_cli"]


def run_cli(parser: argparse.ArgumentParser, run: Callable[[argparse.Namespace], int], argv: list[str] | None) -> int:
    """Parse `argv` and `run`; returns the exit status: argparse's own (0 for --help, 2 for a bad flag),
    or 2 with one `error: ...` line on stderr for a user-fixable `JStyleError`."""
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    try:
        return run(args)
    except JStyleError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
