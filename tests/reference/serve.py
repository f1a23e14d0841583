"""Run tests/reference scripts, one after another, in one long-lived checker-env process.

The Jittor-side tests ask it (tests/jstyle/conftest.py `run_reference`) instead of starting a new Python
for each reference, so torch, diffusers and transformers are imported once per test session. One JSON
request per stdin line: {"script": PATH, "args": [...]} runs PATH as `python PATH ARGS...` would
(`__name__ == "__main__"`, its folder first on sys.path), or {"code": SOURCE, "args": [...]} as
`python -c SOURCE ARGS...`. One JSON reply per stdout line: {"rc", "stdout", "stderr"}.
Never imports jittor.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import runpy
import sys
import traceback


def run_one(request: dict) -> dict:
    """Run one script (or -c source) with its own argv, stdout and stderr; torch's grad mode reset."""
    out, err, rc = io.StringIO(), io.StringIO(), 0
    script = request.get("script")
    saved_argv, saved_path = sys.argv, list(sys.path)
    sys.argv = [script or "-c", *request.get("args", [])]
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)) if script else "")
    if "torch" in sys.modules:
        sys.modules["torch"].set_grad_enabled(True)  # a script before may have turned it off
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            if script:
                runpy.run_path(script, run_name="__main__")
            else:
                exec(compile(request["code"], "<string>", "exec"), {"__name__": "__main__"})
    except SystemExit as e:
        rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:
        rc = 1
        err.write(traceback.format_exc())
    finally:
        sys.argv, sys.path[:] = saved_argv, saved_path
    return {"rc": rc, "stdout": out.getvalue(), "stderr": err.getvalue()}


def main() -> None:
    reply_to = sys.stdout
    for line in sys.stdin:
        if line.strip():
            reply_to.write(json.dumps(run_one(json.loads(line))) + "\n")
            reply_to.flush()


if __name__ == "__main__":
    main()
