"""The one error type the checker raises for bad input or missing weights.

The CLI catches it and prints its message (one line per problem, no traceback), exit code 2.
"""

from __future__ import annotations

__all__ = ["CheckerError"]


class CheckerError(Exception):
    """User-facing error: the message says which file is wrong and what to do about it."""
