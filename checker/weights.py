"""Where each backbone's weights come from: a flag, an env var, or a file in the weights dir.

Nothing is ever downloaded. Precedence per model: ``--<model>-weights PATH`` > env var >
``<weights dir>/<default name>`` (weights dir = ``--weights`` or ``$JSTYLE_CHECKER_WEIGHTS``).
A missing model is one CheckerError listing, for each missing file, where it goes.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import warnings
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from checker.errors import CheckerError

__all__ = [
    "WeightSlot",
    "SLOTS",
    "WEIGHTS_DIR_ENV",
    "resolve_weights",
    "seeded",
    "package_file",
    "load_state_dict_file",
]

WEIGHTS_DIR_ENV = "JSTYLE_CHECKER_WEIGHTS"


@dataclass(frozen=True)
class WeightSlot:
    """One model file or folder the checker needs."""

    name: str
    metric: str
    names: tuple[str, ...]  # accepted names inside the weights dir, first = documented default
    env: str
    flag: str
    what: str
    optional: bool = False  # optional slots fall back to a copy shipped in a PyPI wheel


SLOTS: dict[str, WeightSlot] = {
    s.name: s
    for s in (
        WeightSlot(
            "dino", "dino", ("dinov2-base",), "JSTYLE_CHECKER_DINO", "--dino-weights",
            "Hugging Face folder of facebook/dinov2-base (config.json + model.safetensors)",
        ),
        WeightSlot(
            "clip", "clip_r", ("clip-vit-large-patch14",), "JSTYLE_CHECKER_CLIP", "--clip-weights",
            "Hugging Face folder of openai/clip-vit-large-patch14 (config.json, model.safetensors, "
            "vocab.json, merges.txt)",
        ),
        WeightSlot(
            "clip_rn50", "clip_iqa", ("clip_rn50.pt", "RN50.pt"), "JSTYLE_CHECKER_CLIP_RN50", "--clip-rn50-weights",
            "OpenAI CLIP RN50.pt (the TorchScript file OpenAI and piq distribute) or a state dict saved from it",
        ),
        WeightSlot(
            "squeezenet", "lpips", ("squeezenet1_1.pth", "squeezenet1_1-b8a52dc0.pth"),
            "JSTYLE_CHECKER_SQUEEZENET", "--squeezenet-weights",
            "torchvision ImageNet state dict squeezenet1_1-b8a52dc0.pth",
        ),
        WeightSlot(
            "lpips_heads", "lpips", ("lpips_squeeze.pth",), "JSTYLE_CHECKER_LPIPS_HEADS", "--lpips-heads",
            "LPIPS v0.1 squeeze linear heads (default: the copy in the torchmetrics or lpips wheel)",
            optional=True,
        ),
        WeightSlot(
            "inception", "fid", ("pt_inception-2015-12-05-6726825d.pth", "weights-inception-2015-12-05-6726825d.pth"),
            "JSTYLE_CHECKER_INCEPTION", "--inception-weights",
            "FID Inception-v3 state dict (torch-fidelity weights-inception-2015-12-05-6726825d.pth or "
            "pytorch-fid pt_inception-2015-12-05-6726825d.pth)",
        ),
    )
}


def resolve_weights(
    slots: list[str],
    weights_dir: Path | None = None,
    overrides: Mapping[str, Path | None] | None = None,
    env: Mapping[str, str] | None = None,
) -> dict[str, Path | None]:
    """Path for each slot (None for an optional slot left to its shipped default).

    Raises CheckerError naming every missing file and where it goes.
    """
    env = os.environ if env is None else env
    overrides = overrides or {}
    if weights_dir is None and env.get(WEIGHTS_DIR_ENV):
        weights_dir = Path(env[WEIGHTS_DIR_ENV])
    found: dict[str, Path | None] = {}
    missing: list[str] = []
    for name in slots:
        slot = SLOTS[name]
        explicit = overrides.get(name) or (Path(env[slot.env]) if env.get(slot.env) else None)
        if explicit is not None:
            if not explicit.exists():
                source = slot.flag if overrides.get(name) else f"${slot.env}"
                missing.append(f"{source} {explicit}: does not exist; expected the {slot.what}")
            found[name] = explicit
            continue
        candidates = [weights_dir / n for n in slot.names] if weights_dir is not None else []
        hit = next((c for c in candidates if c.exists()), None)
        if hit is not None or slot.optional:
            found[name] = hit
            continue
        where = f"{weights_dir / slot.names[0]}" if weights_dir else f"<weights dir>/{slot.names[0]} (--weights DIR)"
        missing.append(
            f"missing {slot.metric} weights: put the {slot.what} at {where}, or pass {slot.flag} PATH "
            f"or set {slot.env}"
        )
    if missing:
        missing.append("(or run with --random-weights for a demo; its scores are meaningless; see docs/checker.md)")
        raise CheckerError("\n".join(missing))
    return found


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed torch's RNG for random-weight construction without touching the caller's RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def package_file(package: str, *parts: str) -> Path | None:
    """A data file shipped inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        path = Path(root).joinpath(*parts)
        if path.is_file():
            return path
    return None


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(n.endswith("constants.pkl") for n in zf.namelist())


def load_state_dict_file(path: Path, what: str) -> dict[str, torch.Tensor]:
    """Load a state dict from a .pth/.pt/.safetensors file or a TorchScript archive."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        if _is_torchscript(path):  # OpenAI's RN50.pt is a TorchScript archive
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                obj = torch.jit.load(str(path), map_location="cpu").state_dict()
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure here is a bad weights file
        raise CheckerError(f"{path}: cannot load {what} ({type(exc).__name__}: {exc})") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise CheckerError(f"{path}: expected a state dict for {what}, got {type(obj).__name__}")
    return dict(obj)
