"""The checker as a scorer that stays loaded: ``python -m checker.serve [--device D] [--weights DIR]``.

One JSON request per line on stdin, one JSON answer per line on stdout (nothing else is written there):

    {"submission": DIR, "data": DIR, "style": "00", "prompts": ["Cat", ...] | null, "metrics": [...] | null}
    -> {"ok": true, "style": "00", "metrics": {name: value}, "final": x | null, "higher_is_better": {...},
        "images": {file: {...}}, "loads": n, "seconds": s}
    -> {"ok": false, "error": "one line"}

Each request is scored by ``checker.run.evaluate``, the function ``check.sh`` runs, on that one style
(``check.sh --styles STYLE --prompts ...`` gives the same numbers). With one style the pooled FID is the
style's own FID, so ``final`` is the official formula with that style's own FID; the official FID pools
every style of a submission, so a submission's official final is not the mean of per-style finals.
Backbones are built once, the first time a request needs them (``loads`` counts the builds). The first
line written is ``{"ready": true, ...}``; end of input (the client closed the pipe or died) ends the process.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from checker.config import METRIC_NAMES, MODES, RANDOM_WEIGHTS_WARNING, CheckerConfig
from checker.errors import CheckerError
from checker.metric import Backbones, Metric
from checker.metrics import METRICS

__all__ = ["Scorer", "serve", "main"]


class Scorer:
    """Scores one style per request with backbones built once per process."""

    def __init__(self, device: str = "cpu", weights_dir: Path | None = None, random_weights: bool = False,
                 seed: int = 0, mode: str = "official", registry: Mapping[str, Metric] = METRICS,
                 log=lambda s: None) -> None:
        self.device, self.weights_dir, self.random_weights = device, weights_dir, random_weights
        self.seed, self.mode, self.registry, self.log = seed, mode, registry, log
        self.bb = Backbones()
        self.built: set[str] = set()
        self.loads = 0  # load_backbones calls that built a model

    def _config(self, request: Mapping[str, Any]) -> CheckerConfig:
        for key in ("submission", "data", "style"):
            if not isinstance(request.get(key), str):
                raise CheckerError(f"request: '{key}' must be a string (got {request.get(key)!r})")
        wanted = request.get("metrics") or list(self.registry)
        unknown = [m for m in wanted if m not in self.registry]
        if unknown:
            raise CheckerError(f"request metrics {','.join(unknown)}: unknown; choose from {','.join(self.registry)}")
        prompts = request.get("prompts")
        return CheckerConfig(submission=Path(request["submission"]), data=Path(request["data"]),
                             styles=(request["style"],), metrics=tuple(m for m in self.registry if m in wanted),
                             device=self.device, mode=self.mode, random_weights=self.random_weights, seed=self.seed,
                             prompts=None if prompts is None else tuple(prompts))

    def backbones(self, cfg: CheckerConfig) -> Backbones:
        """The loaded backbones, building those of `cfg.metrics` not built yet (once per process)."""
        from checker.run import load_backbones

        todo = tuple(m for m in cfg.metrics if m not in self.built)
        if any(self.registry[m].build is not None for m in todo):
            more = load_backbones(CheckerConfig(cfg.submission, cfg.data, metrics=todo, device=self.device,
                                                random_weights=self.random_weights, seed=self.seed),
                                  self.weights_dir, log=self.log, registry=self.registry)
            self.bb.models.update(more.models)
            self.bb.sources.update(more.sources)
            self.loads += 1
        self.built |= set(todo)
        return self.bb

    def score(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """One style's metrics and final (see the module docstring); CheckerError for bad input."""
        from checker.run import check_inputs, evaluate

        t0 = time.perf_counter()
        cfg = self._config(request)
        check_inputs(cfg, self.registry)
        result = evaluate(cfg, self.backbones(cfg), registry=self.registry)
        style = result["styles"][cfg.styles[0]]
        return {"ok": True, "style": cfg.styles[0], "metrics": result["metrics"], "final": result["final_score"],
                "higher_is_better": result["higher_is_better"], "images": style["images"],
                "problems": [p for p in result["problems"] if p["kind"] != "size"],
                "random_weights": self.random_weights, "loads": self.loads,
                "seconds": round(time.perf_counter() - t0, 3)}


def serve(scorer: Scorer, inp: TextIO, out: TextIO) -> None:
    """Answer each request line of `inp` on `out` until end of input."""
    for line in inp:
        if not line.strip():
            continue
        try:
            answer = scorer.score(json.loads(line))
        except (CheckerError, ValueError, TypeError) as e:  # bad request: one line back, the scorer goes on
            answer = {"ok": False, "error": str(e).splitlines()[0] if str(e) else type(e).__name__}
        from checker.cli import _finite

        out.write(json.dumps(_finite(answer), allow_nan=False) + "\n")
        out.flush()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m checker.serve", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    p.add_argument("--weights", type=Path, default=None, metavar="DIR", help="weights folder (as check.sh's)")
    p.add_argument("--random-weights", action="store_true",
                   help="random backbones: every score but hist is MEANINGLESS")
    p.add_argument("--seed", type=int, default=0, help="seed for --random-weights (default 0, as check.sh's)")
    p.add_argument("--mode", choices=MODES, default="official", help="official (default) or fixed")
    p.add_argument("--preload", default="", metavar="LIST", help=f"metrics whose backbones load at start "
                   f"(of {','.join(METRIC_NAMES)}; default none: the first request that needs one loads it)")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    protocol = os.fdopen(os.dup(1), "w", buffering=1)  # answers only: anything printed goes to stderr
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    try:
        from checker.cli import _resolve_device

        device = _resolve_device(args.device)
        if device.startswith("cuda"):
            import torch

            torch.backends.cuda.matmul.allow_tf32 = False  # full fp32, as check.sh computes
            torch.backends.cudnn.allow_tf32 = False
        scorer = Scorer(device, args.weights, args.random_weights, args.seed, args.mode, log=log)
        if args.random_weights:
            log("!! " + RANDOM_WEIGHTS_WARNING)
        preload = tuple(m for m in METRIC_NAMES if m in args.preload.split(","))
        if preload:
            scorer.backbones(CheckerConfig(Path("."), Path("."), metrics=preload, device=device))
    except CheckerError as e:
        protocol.write(json.dumps({"ready": False, "error": str(e).splitlines()[0]}) + "\n")
        return 2
    protocol.write(json.dumps({"ready": True, "device": device, "pid": os.getpid(), "loads": scorer.loads}) + "\n")
    try:
        serve(scorer, sys.stdin, protocol)
    except (KeyboardInterrupt, BrokenPipeError):
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
