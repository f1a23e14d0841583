"""``python -m checker``: see ``checker.cli``."""

from checker.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
