"""The Jittor side's handle on the checker's scorer (`python -m checker.serve` in the checker env).

One scorer process per run, started with `$JSTYLE_CHECKER_PYTHON` the first time a style is scored, talking
JSON lines over its stdin/stdout pipes; its stderr goes to a log file. A scorer that died (killed, out of
memory) is started again and the request re-sent. torch is never imported here: it lives in that process.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

from .errors import ConfigError, JStyleError

__all__ = ["Scorer", "ScorerError", "checker_python"]

ROOT = Path(__file__).resolve().parents[1]


class ScorerError(JStyleError):
    """The scorer refused a request or could not start."""


def checker_python() -> str:
    """The checker env's python ($JSTYLE_CHECKER_PYTHON, set by envs/env.sh)."""
    python = os.environ.get("JSTYLE_CHECKER_PYTHON", "")
    if not python or not Path(python).exists():
        raise ConfigError("scoring runs the checker in its own env: set JSTYLE_CHECKER_PYTHON (source envs/env.sh; "
                          "bash envs/setup.sh checker creates it)")
    return python


class Scorer:
    """`score(submission, data, style, prompts, metrics)` -> the scorer's answer (checker.serve's docstring)."""

    def __init__(self, device: str = "auto", weights: str | None = None, random_weights: bool = False,
                 log: Path | None = None, restarts: int = 2):
        self.device, self.weights, self.random_weights = device, weights, random_weights
        self.log, self.restarts = log, restarts
        self.proc: subprocess.Popen | None = None
        self.started = 0  # processes started (1 + restarts)

    def _start(self) -> None:
        cmd = [checker_python(), "-m", "checker.serve", "--device", self.device]
        if self.weights:
            cmd += ["--weights", str(self.weights)]
        if self.random_weights:
            cmd.append("--random-weights")
        env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        stderr = subprocess.DEVNULL
        if self.log is not None:
            self.log.parent.mkdir(parents=True, exist_ok=True)
            stderr = open(self.log, "ab")  # noqa: SIM115 - the child keeps it
        try:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, env=env,
                                         cwd=ROOT, text=True, bufsize=1)
        finally:
            if stderr is not subprocess.DEVNULL:
                stderr.close()
        self.started += 1
        ready = self._read()
        if not ready.get("ready"):
            self.close()
            raise ScorerError(f"the checker's scorer did not start: {ready.get('error', 'no answer')} "
                              f"(log: {self.log})")

    def _read(self) -> dict[str, Any]:
        line = self.proc.stdout.readline() if self.proc else ""
        if not line:
            raise BrokenPipeError("the scorer closed its output")
        return json.loads(line)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc and self.proc.poll() is None else None

    def score(self, submission: Path | str, data: Path | str, style: str, prompts: list[str] | None = None,
              metrics: list[str] | None = None) -> dict[str, Any]:
        """One style's scores (its metrics, final, per-image values); a dead scorer is restarted."""
        request = json.dumps({"submission": str(submission), "data": str(data), "style": style, "prompts": prompts,
                              "metrics": metrics}) + "\n"
        for attempt in range(self.restarts + 1):
            if self.proc is None or self.proc.poll() is not None:
                self.close()
                self._start()
            try:
                self.proc.stdin.write(request)
                self.proc.stdin.flush()
                answer = self._read()
                break
            except (BrokenPipeError, OSError, ValueError):
                self.close()
                if attempt == self.restarts:
                    raise ScorerError(f"the checker's scorer died {attempt + 1} times scoring style {style} "
                                      f"(log: {self.log})") from None
        if not answer.get("ok"):
            raise ScorerError(f"scoring style {style}: {answer.get('error')}")
        return answer

    def close(self) -> None:
        """End the scorer (closing its input ends it; killed if it does not exit)."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        try:
            proc.stdin.close()
        except OSError:
            pass
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()
